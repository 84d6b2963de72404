"""The property suite's cases and oracles (tests/test_properties.py): the shapes, the
drawing strategy `cases` (each variant drawn only over the arguments its registry entry
accepts), and each variant's oracle.

A new variant joins through an entry in ORACLES, or by its registry entry's `equals` (the
variant it computes exactly); a registered name with neither fails the suite.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

import attention_zoo
from attention_zoo import deltanet, gated_deltanet, gla, linear, registry, retention
from tests import oracle

NAMES = attention_zoo.names()
# (B, T, S, N, K, H): T = 1, S = 1, T != S, T == S (causal-only variants use those).
SHAPES = [(2, 5, 7, 4, 2, 4), (1, 1, 6, 2, 1, 4), (2, 6, 1, 2, 2, 4), (1, 7, 7, 4, 1, 4),
          (2, 5, 5, 2, 1, 4)]
WINDOWS = [(1, 2), (0, 0), (3, 0), (2**40, 2**40)]
HUGE = 2**40


@dataclasses.dataclass(frozen=True)
class Oracle:
  """How the property tests call a variant and what they compare it with.

  reference(case, options) -> the float32 output (checked on rows that attend a key);
  `options`: the values drawn for each option bound at lookup (the first is the one the
  fixed cases use); `needs`: call arguments it cannot run without; `weighs(case, options)`:
  bool [B, N, T, S], the allowed pairs whose weight is not exactly zero (default: all).
  """
  reference: Callable
  options: dict = dataclasses.field(default_factory=dict)
  needs: tuple[str, ...] = ()
  weighs: Callable = lambda case, options: case.allowed()
  # The delta rule writes its keys into the state (beta k (v - S^T k)^T): a NaN key is then
  # also a NaN written value, which may meet zero weights (0·NaN) in its chunk's earlier rows.
  keys_are_written: bool = False

  def fixed_options(self) -> dict:
    return {option: values[0] for option, values in self.options.items()}


def _softmax_reference(case, options):
  del options
  call = dict(case.call)
  if "logit_soft_cap" in call or "sinks" in call:  # not in JAX's attention: the formula
    q, k, v = (x.astype(jnp.float32) for x in (case.q, case.k, case.v))
    return oracle.softmax_formula(q, k, v, case.bias, case.allowed(), call.get("scale"),
                                  call.get("logit_soft_cap"), call.get("sinks"))
  mask = case.mask
  segment_ids = call.pop("segment_ids", None)
  if segment_ids is not None:  # JAX's attention has no segment ids: the same pairs as a mask
    mask = segment_mask(segment_ids, case.B, case.T, case.S)
    if case.mask is not None:
      mask = mask & np.asarray(case.mask).reshape((1,) * (4 - case.mask.ndim) + case.mask.shape)
  if call.get("local_window_size") is not None:  # JAX's own mask overflows int32 beyond
    left, right = call["local_window_size"]
    call["local_window_size"] = (min(left, case.T - 1), min(right, case.S - 1))
  for arg in ("query_seq_lengths", "key_value_seq_lengths"):
    if call.get(arg) is not None:  # JAX takes int32 only
      call[arg] = jnp.asarray(call[arg], jnp.int32)
  q, k, v = (x.astype(jnp.float32) for x in (case.q, case.k, case.v))
  return oracle.reference(q, k, v, case.bias, mask, **call)


def _linear_reference(case, options):
  q, k, v = (x.astype(jnp.float32) for x in (case.q, case.k, case.v))
  phi_q, phi_k = linear.features(q, k, scale=case.call.get("scale"),
                                 feature_map=options["feature_map"],
                                 num_features=options["num_features"])
  return oracle.kernelized(phi_q, phi_k, v, case.allowed())


def _linear_weighs(case, options):
  """relu features can share no positive coordinate: such pairs weigh exactly zero."""
  phi_q, phi_k = linear.features(case.q, case.k, scale=case.call.get("scale"),
                                 feature_map=options["feature_map"],
                                 num_features=options["num_features"])
  phi_k = jnp.repeat(phi_k, case.N // case.k.shape[2], axis=2)
  return case.allowed() & np.asarray(jnp.einsum("btnf,bsnf->bnts", phi_q, phi_k) > 0)


def _recurrence_reference(module):
  """A gated or delta-rule recurrence's own token-by-token scan (its oracle; the scan is
  itself checked against a float64 numpy recurrence in tests/test_gated.py)."""
  def reference(case, options):
    q, k, v = (x.astype(jnp.float32) for x in (case.q, case.k, case.v))
    call = {a: x for a, x in case.call.items()
            if a in ("scale", "query_seq_lengths", "key_value_seq_lengths", "segment_ids")}
    return module.recurrent_scan(q, k, v, **call, **case.inputs, **options)[0]
  return reference


# Blocks of 4 x 3 rows (chunked), 4 (local) and 3 (linear's causal chunks): no drawn length
# is a multiple of all, so every path through partial blocks is taken.
ORACLES: dict[str, Oracle] = {
    "softmax": Oracle(_softmax_reference),
    "chunked": Oracle(_softmax_reference, dict(query_chunk_size=(4,), key_chunk_size=(3,))),
    "local": Oracle(_softmax_reference, dict(block_size=(4,)), needs=("local_window_size",)),
    "ring": Oracle(_softmax_reference),
    "linear": Oracle(_linear_reference, dict(feature_map=linear.FEATURE_MAPS,
                                             num_features=(16,), chunk_size=(3,)),
                     weighs=_linear_weighs),
    **{m.NAME: Oracle(_recurrence_reference(m), options) for m, options in (
        (retention, dict(chunk_size=(3,))), (gla, dict(chunk_size=(4,), sub_chunk_size=(2,))),
        (deltanet, dict(chunk_size=(3,))), (gated_deltanet, dict(chunk_size=(3,))))},
}
ORACLES.update({m.NAME: dataclasses.replace(ORACLES[m.NAME], keys_are_written=True)
                for m in (deltanet, gated_deltanet)})


def oracle_of(name) -> Oracle:
  equals = registry.entry(name).equals
  if name not in ORACLES and equals is not None:  # its default options, the equal's oracle
    return dataclasses.replace(ORACLES[equals], options={})
  assert name in ORACLES, (f"add an oracle for {name} to ORACLES in tests/property_cases.py "
                           f"(how to call it and what it must equal), or give its registry "
                           f"entry `equals`")
  return ORACLES[name]


@dataclasses.dataclass
class Case:
  """One drawn call: batched arrays, call arguments, per-token inputs and the rank used."""
  q: jax.Array
  k: jax.Array
  v: jax.Array
  bias: jax.Array | None
  mask: jax.Array | None
  call: dict
  inputs: dict
  unbatched: bool

  B = property(lambda self: self.q.shape[0])
  T = property(lambda self: self.q.shape[1])
  S = property(lambda self: self.k.shape[1])
  N = property(lambda self: self.q.shape[2])

  def allowed(self):
    """bool [B, N, T, S]: may query i attend key j (lengths with JAX's meaning)."""
    mask = None if self.mask is None else np.broadcast_to(
        np.asarray(self.mask).reshape((1,) * (4 - self.mask.ndim) + self.mask.shape),
        (self.B, self.N, self.T, self.S))
    if self.call.get("segment_ids") is not None:
      segments = segment_mask(self.call["segment_ids"], self.B, self.T, self.S)
      mask = segments if mask is None else mask & segments
    window = self.call.get("local_window_size")
    if window is not None:
      window = tuple(min(w, HUGE) for w in window)
    return oracle.allowed(self.B, self.N, self.T, self.S, mask=mask,
                          is_causal=self.call.get("is_causal", False),
                          local_window_size=window,
                          query_seq_lengths=self.call.get("query_seq_lengths"),
                          key_value_seq_lengths=self.call.get("key_value_seq_lengths"))

  def live(self):
    """float [B, T, N, 1]: 1 on rows that attend at least one key."""
    return self.allowed().any(-1).transpose(0, 2, 1)[..., None].astype(np.float32)

  def run(self, fn, q=None, k=None, v=None, bias=None):
    """fn on this case (in the rank drawn), returned batched."""
    q, k, v = (self.q if q is None else q, self.k if k is None else k,
               self.v if v is None else v)
    bias = self.bias if bias is None else bias
    if self.unbatched:
      out = fn(q[0], k[0], v[0], bias, self.mask, **self._call1(), **self._inputs1())
      assert out.shape == q.shape[1:], out.shape
      return out[None]
    return fn(q, k, v, bias, self.mask, **self.call, **self.inputs)

  def _call1(self):
    """The call of the unbatched form: lengths [1], segment ids [T] (or a [T], [S] pair)."""
    call = {a: (x if not a.endswith("lengths") else x[:1]) for a, x in self.call.items()}
    if call.get("segment_ids") is not None:
      ids = call["segment_ids"]
      call["segment_ids"] = tuple(x[0] for x in ids) if isinstance(ids, tuple) else ids[0]
    return call

  def _inputs1(self):
    return {a: x[0] for a, x in self.inputs.items()}


def mesh_for(name):
  """ring needs a mesh with its axis (a one-device mesh suffices here)."""
  axis_option = registry.entry(name).mesh_axis_option
  if axis_option is None:
    return contextlib.nullcontext()
  axis = attention_zoo.options(name)[axis_option]
  mesh = jax.make_mesh((1,), (axis,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:1])
  return jax.set_mesh(mesh)


@st.composite
def cases(draw, name, dtypes=(jnp.float32, jnp.bfloat16), nan=False):
  """(options, Case) over what `name` accepts."""
  entry, spec = registry.entry(name), oracle_of(name)
  refuses = set(entry.refuses)
  shapes = [s for s in SHAPES if s[1] == s[2]] if entry.causal_only else SHAPES
  B, T, S, N, K, H = draw(st.sampled_from(shapes))
  dtype = draw(st.sampled_from(dtypes))
  rng = np.random.default_rng(draw(st.integers(0, 2**16)))
  q, k, v = arrays(name, rng, (B, T, S, N, K, H), dtype)
  call = {"is_causal": True if entry.causal_only else draw(st.booleans())}
  if draw(st.booleans()):
    call["scale"] = 0.7
  window_drawn = "local_window_size" not in refuses and (
      "local_window_size" in spec.needs or draw(st.booleans()))
  if window_drawn:
    call["local_window_size"] = draw(st.sampled_from(WINDOWS))
  for arg, n in (("query_seq_lengths", T), ("key_value_seq_lengths", S)):
    if draw(st.booleans()):
      call[arg] = jnp.asarray(draw(st.lists(st.integers(-2, n + 3), min_size=B, max_size=B)),
                              jnp.int32)
  runs = entry.segments == "runs"  # one shared array, causal: packed rows only
  if ("segment_ids" not in refuses and (not runs or (call["is_causal"] and T == S))
      and draw(st.booleans())):
    call["segment_ids"] = draw_segment_ids(draw, rng, B, T, S, runs)
  if "logit_soft_cap" not in refuses and draw(st.booleans()):
    call["logit_soft_cap"] = draw(st.sampled_from([0.5, 5.0]))
  if "sinks" not in refuses and draw(st.booleans()):
    call["sinks"] = jnp.asarray(rng.normal(size=N), jnp.float32)
  mask = bias = None
  if "mask" not in refuses:
    form = draw(st.sampled_from([None, (B, N, T, S), (B, 1, 1, S), (1, N, T, S), (T, S)]))
    mask = None if form is None else jnp.asarray(rng.random(form) > 0.3)
  if "bias" not in refuses:
    form = draw(st.sampled_from([None, (1, N, T, S), (B, 1, 1, S), (S,)]))
    bias = None if form is None else jnp.asarray(rng.normal(size=form), jnp.float32)
  unbatched = B == 1 and not nan and draw(st.booleans())
  options = {option: draw(st.sampled_from(values)) for option, values in spec.options.items()}
  inputs = oracle.per_token_inputs(name, q.shape, rng)
  return options, Case(q, k, v, bias, mask, call, inputs, unbatched)


def draw_segment_ids(draw, rng, B, T, S, runs=False):
  """Packed rows (ids that never decrease, one array when T == S; only these if `runs`) or
  arbitrary ids per position (a query and a key pair), from 1 to 3 segments."""
  n = draw(st.integers(1, 3))
  if T == S and (runs or draw(st.booleans())):
    return jnp.asarray(np.sort(rng.integers(0, n, size=(B, T)), axis=1), jnp.int32)
  return tuple(jnp.asarray(rng.integers(0, n, size=(B, m)), jnp.int32) for m in (T, S))


def segment_mask(segment_ids, B, T, S):
  """bool [B, 1, T, S]: the pairs `segment_ids` allows (query and key share an id)."""
  q_ids, k_ids = (segment_ids if isinstance(segment_ids, tuple) else (segment_ids,) * 2)
  q_ids, k_ids = np.broadcast_to(q_ids, (B, T)), np.broadcast_to(k_ids, (B, S))
  return (q_ids[:, :, None] == k_ids[:, None, :])[:, None]


def arrays(name, rng, shape, dtype):
  """q, k, v of `shape` (B, T, S, N, K, H); unit-norm keys where the layer normalises them."""
  B, T, S, N, K, H = shape
  q = jnp.asarray(rng.normal(size=(B, T, N, H)), dtype)
  k, v = (jnp.asarray(rng.normal(size=(B, S, K, H)), dtype) for _ in range(2))
  return q, oracle.unit_keys(name, k), v


def fixed_case(name, dtype=jnp.float32, seed=0, **call):
  """(options, Case): a deterministic call of `name` (B = 2, T = 5, S = 7; T = S = 7 for a
  causal-only variant) with `call` and whatever the variant cannot run without."""
  entry, spec = registry.entry(name), oracle_of(name)
  shape = (2, 7, 7, 4, 2, 4) if entry.causal_only else (2, 5, 7, 4, 2, 4)
  rng = np.random.default_rng(seed)
  q, k, v = arrays(name, rng, shape, dtype)
  if entry.causal_only:
    call.setdefault("is_causal", True)
  if "local_window_size" in spec.needs:
    call.setdefault("local_window_size", (2, 1))
  case = Case(q, k, v, None, None, call, oracle.per_token_inputs(name, q.shape, rng), False)
  return spec.fixed_options(), case
