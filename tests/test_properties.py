"""Every registered variant against its oracle on arguments that hypothesis draws.

Shapes come from a small set (T or S = 1, T != S, GQA ratios 1, 2 and 4, lengths that are
multiples of no block size used here), so compiled functions are reused across examples;
the rest is drawn: dtype, causal, windows up to 2**40, masks and biases of each broadcast
form and of lower rank, both padding lengths from -2 to the axis length + 3, the unbatched
rank-3 form, NaN inputs. A variant is drawn only over the arguments its registry entry
accepts. The default profile keeps the run near a minute on two cores; the `fuzz`-marked
tests repeat the main properties with more examples (part of the full suite).

The cases and the oracles are in tests/property_cases.py; a new variant joins there.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attention_zoo
from attention_zoo import mods, registry
from tests.property_cases import HUGE, NAMES, ORACLES, cases, fixed_case, mesh_for, oracle_of

# Derandomized, so that CI sees the same examples on every run (set derandomize=False
# locally to explore); no example database is written.
DEFAULT = settings(max_examples=3, deadline=None, derandomize=True, database=None,
                   suppress_health_check=list(HealthCheck))
FUZZ = settings(DEFAULT, max_examples=12)


def test_every_variant_has_an_oracle():
  missing = [n for n in NAMES if n not in ORACLES and registry.entry(n).equals is None]
  assert not missing, f"add an oracle for {missing} to ORACLES in tests/property_cases.py"


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
  spec = oracle_of(name)
  attend = attention_zoo.get(name, **options)
  live = case.live()
  cotangent = jnp.asarray(np.random.default_rng(1).normal(size=case.q.shape) * live, jnp.float32)
  grads = case.q.dtype == jnp.float32
  with mesh_for(name):
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
  with mesh_for(name):
    clean = np.asarray(case.run(attend))
    dirty = np.asarray(case.run(attend, **arrays))
  # [B, N, T, S]: for a value, only pairs of nonzero weight (linear's relu rows whose
  # normaliser is exactly zero are zeros whatever the values hold).
  allowed = case.allowed() if where != "value" else oracle_of(name).weighs(case, options)
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
  written = where == "value" or (where == "key" and oracle_of(name).keys_are_written)
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
  with mesh_for(name):
    return np.asarray(case.run(attention_zoo.get(name, **options)))


@pytest.mark.parametrize("name", NAMES)
def test_padding_lengths_outside_the_axis(name):
  """Lengths past the end mean the whole axis (as in JAX), zero or negative mean none:
  the same for every variant, checked against the oracle."""
  options, case = fixed_case(name)
  if "local_window_size" in case.call:  # one that reaches the padding past the last key
    case.call["local_window_size"] = (1, case.S + 2)
  case.call.update(query_seq_lengths=jnp.array([case.T + 4, -1], jnp.int32),
                   key_value_seq_lengths=jnp.array([case.S + 5, -3], jnp.int32))
  got = _run_fixed(name, options, case)
  want = np.asarray(oracle_of(name).reference(case, options))
  live = case.live()
  assert live[0].all() and not live[1].any()
  np.testing.assert_allclose(got * live, want * live, atol=5e-5, rtol=5e-4)
  np.testing.assert_array_equal(got[1], 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_unbatched_and_lower_rank_forms(name):
  """Rank-3 query/key/value ([T, N, H]) are a batch of one, lengths then have shape [1]; a
  mask or bias of rank below 4 gets leading unit axes: as `jax.nn.dot_product_attention`."""
  refuses = registry.entry(name).refuses
  options, case = fixed_case(name)
  case = dataclasses.replace(case, q=case.q[:1], k=case.k[:1], v=case.v[:1],
                             inputs={a: x[:1] for a, x in case.inputs.items()})
  case.call["key_value_seq_lengths"] = jnp.array([4], jnp.int32)
  rng = np.random.default_rng(5)
  if "mask" not in refuses:
    case.mask = jnp.asarray(rng.random((case.T, case.S)) > 0.3)
  if "bias" not in refuses:
    case.bias = jnp.asarray(rng.normal(size=(case.S,)), jnp.float32)
  want = np.asarray(oracle_of(name).reference(case, options))
  got = _run_fixed(name, options, dataclasses.replace(case, unbatched=True))
  live = case.live()
  np.testing.assert_allclose(got * live, want * live, atol=5e-5, rtol=5e-4)
  attend = attention_zoo.get(name, **options)
  with mesh_for(name):
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
    options, case = fixed_case(name, is_causal=True)
    case.call["key_value_seq_lengths"] = jnp.array([3, 7])  # int64 under x64
    attend = attention_zoo.get(name, **options)
    run = lambda q, k, v, bias: case.run(attend, q, k, v, bias)
    loss = lambda q, k, v: jnp.sum(run(q, k, v, None))
    with mesh_for(name):
      out = run(None, None, None, None)
      jaxpr = str(jax.make_jaxpr(jax.grad(loss, (0, 1, 2)))(case.q, case.k, case.v))
    assert out.dtype == jnp.float32
    assert not _F64_ARRAY.search(jaxpr), [l for l in jaxpr.splitlines()
                                         if _F64_ARRAY.search(l)][:3]
    want = np.asarray(oracle_of(name).reference(case, options))
    np.testing.assert_allclose(np.asarray(out) * case.live(), want * case.live(),
                               **_tolerance(jnp.float32))
    options, case = fixed_case(name, dtype=jnp.float64)
    with mesh_for(name), pytest.raises(ValueError, match=f"^{name}: query .* got float64"):
      case.run(attention_zoo.get(name, **options))


@pytest.mark.parametrize("name", NAMES)
def test_static_arguments_are_range_checked(name):
  """A non-finite scale raises naming it; an int option of 2**40 runs (a size clipped to the
  sequence) or raises naming it, and -1 raises naming it; a window of (2**40, 2**40) is
  the same as one spanning the sequences."""
  options, case = fixed_case(name)
  for bad in (float("inf"), float("nan")):
    with pytest.raises(ValueError, match=f"^{name}: scale must be finite"):
      attention_zoo.get(name, **options, scale=bad)
    attend = attention_zoo.get(name, **options)
    with mesh_for(name), pytest.raises(ValueError, match=f"^{name}: scale must be finite"):
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
    np.testing.assert_allclose(huge, np.asarray(oracle_of(name).reference(case, options)),
                               atol=5e-5, rtol=5e-4)


@pytest.mark.parametrize("name", NAMES)
def test_refused_arguments_raise_in_every_form(name):
  """What an entry refuses raises NotImplementedError naming the variant and the argument,
  in each form the accepting variants are drawn with (so none is ever ignored)."""
  entry = registry.entry(name)
  options, case = fixed_case(name)
  B, T, S, N = case.B, case.T, case.S, case.N
  forms = dict(mask=[jnp.ones(f, bool) for f in ((B, N, T, S), (B, 1, 1, S), (T, S))],
               bias=[jnp.zeros(f) for f in ((1, N, T, S), (B, 1, 1, S), (S,))],
               local_window_size=[0, (1, 2), (HUGE, HUGE)],
               segment_ids=[jnp.zeros((B, T), jnp.int32)] * (T == S) +
               [(jnp.zeros((B, T), jnp.int32), jnp.ones((B, S), jnp.int32))],
               logit_soft_cap=[30.0], sinks=[jnp.zeros((N,))], score_mod=[mods.soft_cap(30.0)],
               mask_mod=[mods.causal], return_residual=[True])
  attend = attention_zoo.get(name, **options)
  with mesh_for(name):
    for argument in entry.refuses:
      for value in forms[argument]:
        kwargs = {**case.call, argument: value}
        with pytest.raises(NotImplementedError, match=f"^{name} .*{argument}"):
          attend(case.q, case.k, case.v, **kwargs, **case.inputs)
    if entry.segments == "runs":  # one shared array only: a pair of ids is refused
      with pytest.raises(NotImplementedError, match=f"^{name}: segment_ids .*pair"):
        attend(case.q, case.k, case.v, **{**case.call, "is_causal": True}, segment_ids=(
            jnp.zeros((B, T), jnp.int32), jnp.zeros((B, S), jnp.int32)), **case.inputs)
