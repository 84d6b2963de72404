"""Every registered variant against its oracle on arguments that hypothesis draws.

Shapes come from a small set (T or S = 1, T != S, GQA ratios 1, 2 and 4, lengths that are
multiples of no block size used here), so compiled functions are reused across examples;
the rest is drawn: dtype, causal, windows up to 2**40, masks and biases of each broadcast
form and of lower rank, both padding lengths from -2 to the axis length + 3, the unbatched
rank-3 form, NaN inputs. A variant is drawn only over the arguments its registry entry
accepts. The default profile keeps the run near a minute on two cores; the `fuzz`-marked
tests repeat the main properties with more examples (part of the full suite).

A new variant joins through an entry in ORACLES, or by its registry entry's `equals` (the
variant it computes exactly); a registered name with neither fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attention_zoo
from attention_zoo import deltanet, gated_deltanet, gla, linear, mods, registry, retention
from tests import oracle

# Derandomized, so that CI sees the same examples on every run (set derandomize=False
# locally to explore); no example database is written.
DEFAULT = settings(max_examples=3, deadline=None, derandomize=True, database=None,
                   suppress_health_check=list(HealthCheck))
FUZZ = settings(DEFAULT, max_examples=12)

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


def _oracle(name) -> Oracle:
  equals = registry.entry(name).equals
  if name not in ORACLES and equals is not None:  # its default options, the equal's oracle
    return dataclasses.replace(ORACLES[equals], options={})
  assert name in ORACLES, (f"add an oracle for {name} to ORACLES in tests/test_properties.py "
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


def _mesh_for(name):
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
  entry, spec = registry.entry(name), _oracle(name)
  refuses = set(entry.refuses)
  shapes = [s for s in SHAPES if s[1] == s[2]] if entry.causal_only else SHAPES
  B, T, S, N, K, H = draw(st.sampled_from(shapes))
  dtype = draw(st.sampled_from(dtypes))
  rng = np.random.default_rng(draw(st.integers(0, 2**16)))
  q, k, v = _arrays(name, rng, (B, T, S, N, K, H), dtype)
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
    call["segment_ids"] = _segment_ids(draw, rng, B, T, S, runs)
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


def _segment_ids(draw, rng, B, T, S, runs=False):
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


def _arrays(name, rng, shape, dtype):
  """q, k, v of `shape` (B, T, S, N, K, H); unit-norm keys where the layer normalises them."""
  B, T, S, N, K, H = shape
  q = jnp.asarray(rng.normal(size=(B, T, N, H)), dtype)
  k, v = (jnp.asarray(rng.normal(size=(B, S, K, H)), dtype) for _ in range(2))
  return q, oracle.unit_keys(name, k), v


def _fixed_case(name, dtype=jnp.float32, seed=0, **call):
  """(options, Case): a deterministic call of `name` (B = 2, T = 5, S = 7; T = S = 7 for a
  causal-only variant) with `call` and whatever the variant cannot run without."""
  entry, spec = registry.entry(name), _oracle(name)
  shape = (2, 7, 7, 4, 2, 4) if entry.causal_only else (2, 5, 7, 4, 2, 4)
  rng = np.random.default_rng(seed)
  q, k, v = _arrays(name, rng, shape, dtype)
  if entry.causal_only:
    call.setdefault("is_causal", True)
  if "local_window_size" in spec.needs:
    call.setdefault("local_window_size", (2, 1))
  case = Case(q, k, v, None, None, call, oracle.per_token_inputs(name, q.shape, rng), False)
  return spec.fixed_options(), case


def test_every_variant_has_an_oracle():
  missing = [n for n in NAMES if n not in ORACLES and registry.entry(n).equals is None]
  assert not missing, f"add an oracle for {missing} to ORACLES in tests/test_properties.py"


def _tolerance(dtype):
  if dtype == jnp.float32:
    return dict(atol=5e-5, rtol=5e-4)
  eps = float(jnp.finfo(dtype).eps)
  return dict(atol=2 * eps, rtol=2 * eps)


def _outputs_and_grads(fn, case, cotangent, grads=True):
  """(output float32, grads of sum(output * cotangent) w.r.t. q, k, v and bias), compiled
  as one function: a single compilation per example instead of three."""
  argnums = (0, 1, 2, 3) if case.bias is not None else (0, 1, 2)

  def loss(q, k, v, bias):
    out = fn(q, k, v, bias).astype(jnp.float32)
    return jnp.sum(out * cotangent), out

  if not grads:
    return jax.jit(lambda *a: loss(*a)[1])(case.q, case.k, case.v, case.bias), ()
  (_, out), g = jax.jit(jax.value_and_grad(loss, argnums, has_aux=True))(
      case.q, case.k, case.v, case.bias)
  return out, g


def _check_against_oracle(name, data):
  options, case = data.draw(cases(name))
  spec = _oracle(name)
  attend = attention_zoo.get(name, **options)
  live = case.live()
  cotangent = jnp.asarray(np.random.default_rng(1).normal(size=case.q.shape) * live, jnp.float32)
  grads = case.q.dtype == jnp.float32
  with _mesh_for(name):
    out = case.run(attend)
    assert out.shape == case.q.shape and out.dtype == case.q.dtype
    got, got_grads = _outputs_and_grads(lambda q, k, v, bias: case.run(attend, q, k, v, bias),
                                        case, cotangent, grads)
  want, want_grads = _outputs_and_grads(
      lambda q, k, v, bias: spec.reference(
          dataclasses.replace(case, q=q, k=k, v=v, bias=bias), options),
      case, cotangent, grads)
  np.testing.assert_allclose(got * live, want * live, **_tolerance(case.q.dtype))
  np.testing.assert_array_equal(got * (1 - live), 0.0)  # rows with no key: exactly zero
  for g, w in zip(got_grads, want_grads):
    np.testing.assert_allclose(g, w, atol=2e-4, rtol=2e-3)


@pytest.mark.parametrize("name", NAMES)
@DEFAULT
@given(data=st.data())
def test_matches_oracle_forward_and_gradients(name, data):
  """Every drawn call equals the oracle on rows that attend a key, forward and gradients
  (float32), and gives exactly zero on rows that attend none."""
  _check_against_oracle(name, data)


@pytest.mark.fuzz
@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(data=st.data())
def test_matches_oracle_fuzz(name, data):
  _check_against_oracle(name, data)


def _check_nan_propagation(name, data):
  """A NaN input gives NaN where it reaches and nowhere else; rows with no key stay zero."""
  options, case = data.draw(cases(name, dtypes=(jnp.float32,), nan=True))
  where = data.draw(st.sampled_from(["query", "key", "value"]))
  b = data.draw(st.integers(0, case.B - 1))
  pos = data.draw(st.integers(0, (case.T if where == "query" else case.S) - 1))
  arrays = dict(q=case.q, k=case.k, v=case.v)
  x = arrays[where[0]]
  head = data.draw(st.integers(0, x.shape[2] - 1))
  arrays[where[0]] = x.at[b, pos, head].set(jnp.nan)
  attend = attention_zoo.get(name, **options)
  with _mesh_for(name):
    clean = np.asarray(case.run(attend))
    dirty = np.asarray(case.run(attend, **arrays))
  # [B, N, T, S]: for a value, only pairs of nonzero weight (linear's relu rows whose
  # normaliser is exactly zero are zeros whatever the values hold).
  allowed = case.allowed() if where != "value" else _oracle(name).weighs(case, options)
  live = case.allowed().any(-1).transpose(0, 2, 1)       # [B, T, N]
  reached = np.zeros_like(live)
  if where == "query":
    reached[b, pos, head] = live[b, pos, head]
  else:  # every query head of the key/value head's group
    group = case.N // case.k.shape[2]
    heads = slice(head * group, (head + 1) * group)
    reached[b, :, heads] = allowed[b, heads, :, pos].T
  assert np.isnan(dirty[reached]).all(), f"a NaN {where} did not reach a row that attends it"
  np.testing.assert_array_equal(dirty[~live], 0.0)     # rows that attend no key
  written = where == "value" or (where == "key" and _oracle(name).keys_are_written)
  if not written:  # a NaN value may also meet zero weights (0·NaN) in other rows
    np.testing.assert_array_equal(dirty[~reached], clean[~reached])


@pytest.mark.parametrize("name", NAMES)
@DEFAULT
@given(data=st.data())
def test_nan_reaches_exactly_the_rows_that_attend_it(name, data):
  _check_nan_propagation(name, data)


@pytest.mark.fuzz
@pytest.mark.parametrize("name", NAMES)
@settings(FUZZ, max_examples=8)
@given(data=st.data())
def test_nan_propagation_fuzz(name, data):
  _check_nan_propagation(name, data)


def _run_fixed(name, options, case, **call):
  """The output of `name` on `case` with `call` added to its call arguments, as numpy."""
  case = dataclasses.replace(case, call={**case.call, **call})
  with _mesh_for(name):
    return np.asarray(case.run(attention_zoo.get(name, **options)))


@pytest.mark.parametrize("name", NAMES)
def test_padding_lengths_outside_the_axis(name):
  """Lengths past the end mean the whole axis (as in JAX), zero or negative mean none:
  the same for every variant, checked against the oracle."""
  options, case = _fixed_case(name)
  if "local_window_size" in case.call:  # one that reaches the padding past the last key
    case.call["local_window_size"] = (1, case.S + 2)
  case.call.update(query_seq_lengths=jnp.array([case.T + 4, -1], jnp.int32),
                   key_value_seq_lengths=jnp.array([case.S + 5, -3], jnp.int32))
  got = _run_fixed(name, options, case)
  want = np.asarray(_oracle(name).reference(case, options))
  live = case.live()
  assert live[0].all() and not live[1].any()
  np.testing.assert_allclose(got * live, want * live, atol=5e-5, rtol=5e-4)
  np.testing.assert_array_equal(got[1], 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_unbatched_and_lower_rank_forms(name):
  """Rank-3 query/key/value ([T, N, H]) are a batch of one, lengths then have shape [1]; a
  mask or bias of rank below 4 gets leading unit axes: as `jax.nn.dot_product_attention`."""
  refuses = registry.entry(name).refuses
  options, case = _fixed_case(name)
  case = dataclasses.replace(case, q=case.q[:1], k=case.k[:1], v=case.v[:1],
                             inputs={a: x[:1] for a, x in case.inputs.items()})
  case.call["key_value_seq_lengths"] = jnp.array([4], jnp.int32)
  rng = np.random.default_rng(5)
  if "mask" not in refuses:
    case.mask = jnp.asarray(rng.random((case.T, case.S)) > 0.3)
  if "bias" not in refuses:
    case.bias = jnp.asarray(rng.normal(size=(case.S,)), jnp.float32)
  want = np.asarray(_oracle(name).reference(case, options))
  got = _run_fixed(name, options, dataclasses.replace(case, unbatched=True))
  live = case.live()
  np.testing.assert_allclose(got * live, want * live, atol=5e-5, rtol=5e-4)
  attend = attention_zoo.get(name, **options)
  with _mesh_for(name):
    for q in (case.q[0, 0], case.q[None]):  # ranks 2 and 5
      with pytest.raises(ValueError, match=f"^{name}: query must have rank 4 .* or 3"):
        attend(q, case.k, case.v, **case.call, **case.inputs)
    with pytest.raises(ValueError, match=f"^{name}: key_value_seq_lengths must be .* \\[B\\]"):
      attend(case.q[0], case.k[0], case.v[0], **{
          **case.call, "key_value_seq_lengths": jnp.array([4, 4], jnp.int32)},
             **{a: x[0] for a, x in case.inputs.items()})


_F64_ARRAY = re.compile(r"f64\[[0-9]")  # weakly typed scalars (f64[]) change no dtype


@pytest.mark.parametrize("name", NAMES)
def test_x64_changes_no_dtype_and_float64_is_refused(name):
  """With jax_enable_x64, float32 calls compute exactly as without it (no
  float64 array anywhere in the forward or backward pass); float64 inputs raise a
  ValueError naming the dtype before any computation."""
  with jax.enable_x64(True):
    options, case = _fixed_case(name, is_causal=True)
    case.call["key_value_seq_lengths"] = jnp.array([3, 7])  # int64 under x64
    attend = attention_zoo.get(name, **options)
    run = lambda q, k, v, bias: case.run(attend, q, k, v, bias)
    loss = lambda q, k, v: jnp.sum(run(q, k, v, None))
    with _mesh_for(name):
      out = run(None, None, None, None)
      jaxpr = str(jax.make_jaxpr(jax.grad(loss, (0, 1, 2)))(case.q, case.k, case.v))
    assert out.dtype == jnp.float32
    assert not _F64_ARRAY.search(jaxpr), [l for l in jaxpr.splitlines()
                                         if _F64_ARRAY.search(l)][:3]
    want = np.asarray(_oracle(name).reference(case, options))
    np.testing.assert_allclose(np.asarray(out) * case.live(), want * case.live(),
                               **_tolerance(jnp.float32))
    options, case = _fixed_case(name, dtype=jnp.float64)
    with _mesh_for(name), pytest.raises(ValueError, match=f"^{name}: query .* got float64"):
      case.run(attention_zoo.get(name, **options))


@pytest.mark.parametrize("name", NAMES)
def test_static_arguments_are_range_checked(name):
  """A non-finite scale raises naming it; an int option of 2**40 runs (a size clipped to the
  sequence) or raises naming it, and -1 raises naming it; a window of (2**40, 2**40) is
  the same as one spanning the sequences."""
  options, case = _fixed_case(name)
  for bad in (float("inf"), float("nan")):
    with pytest.raises(ValueError, match=f"^{name}: scale must be finite"):
      attention_zoo.get(name, **options, scale=bad)
    attend = attention_zoo.get(name, **options)
    with _mesh_for(name), pytest.raises(ValueError, match=f"^{name}: scale must be finite"):
      attend(case.q, case.k, case.v, scale=bad, **case.call, **case.inputs)
  for option, default in attention_zoo.options(name).items():
    if not isinstance(default, int) or isinstance(default, bool):
      continue
    with pytest.raises(ValueError, match=f"^{name}: {option} must"):
      attention_zoo.get(name, **{**options, option: -1})
    try:
      out = _run_fixed(name, {**options, option: HUGE}, case)
    except ValueError as e:
      assert re.match(f"^{name}: {option} must", str(e)), e
    else:
      assert np.isfinite(out).all()
  if "local_window_size" not in registry.entry(name).refuses:
    spanning = _run_fixed(name, options, case, local_window_size=(case.T - 1, case.S - 1))
    huge = _run_fixed(name, options, case, local_window_size=(HUGE, HUGE))
    np.testing.assert_array_equal(huge, spanning)
    case.call["local_window_size"] = (HUGE, HUGE)
    np.testing.assert_allclose(huge, np.asarray(_oracle(name).reference(case, options)),
                               atol=5e-5, rtol=5e-4)


@pytest.mark.parametrize("name", NAMES)
def test_refused_arguments_raise_in_every_form(name):
  """What an entry refuses raises NotImplementedError naming the variant and the argument,
  in each form the accepting variants are drawn with (so none is ever ignored)."""
  entry = registry.entry(name)
  options, case = _fixed_case(name)
  B, T, S, N = case.B, case.T, case.S, case.N
  forms = dict(mask=[jnp.ones(f, bool) for f in ((B, N, T, S), (B, 1, 1, S), (T, S))],
               bias=[jnp.zeros(f) for f in ((1, N, T, S), (B, 1, 1, S), (S,))],
               local_window_size=[0, (1, 2), (HUGE, HUGE)],
               segment_ids=[jnp.zeros((B, T), jnp.int32)] * (T == S) +
               [(jnp.zeros((B, T), jnp.int32), jnp.ones((B, S), jnp.int32))],
               logit_soft_cap=[30.0], sinks=[jnp.zeros((N,))], score_mod=[mods.soft_cap(30.0)],
               mask_mod=[mods.causal], return_residual=[True])
  attend = attention_zoo.get(name, **options)
  with _mesh_for(name):
    for argument in entry.refuses:
      for value in forms[argument]:
        kwargs = {**case.call, argument: value}
        with pytest.raises(NotImplementedError, match=f"^{name} .*{argument}"):
          attend(case.q, case.k, case.v, **kwargs, **case.inputs)
    if entry.segments == "runs":  # one shared array only: a pair of ids is refused
      with pytest.raises(NotImplementedError, match=f"^{name}: segment_ids .*pair"):
        attend(case.q, case.k, case.v, **{**case.call, "is_causal": True}, segment_ids=(
            jnp.zeros((B, T), jnp.int32), jnp.zeros((B, S), jnp.int32)), **case.inputs)
