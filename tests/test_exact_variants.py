"""softmax, chunked and local against jax.nn.dot_product_attention(implementation='xla').

Lengths (T=37, S=45) are multiples of no block size used here (chunks 16 x 12, local
blocks 16), so every path through partial blocks is exercised. Outputs and gradients
are compared on the query rows that can attend at least one key (JAX returns the mean
of the values on the others, where the variants return zeros).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_zoo
from tests import oracle

B, T, S, N, K, H = 2, 37, 45, 4, 2, 8
Q_LEN = np.array([30, 37], np.int32)
KV_LEN = np.array([45, 19], np.int32)

VARIANTS = {
    "softmax": {},
    "chunked": dict(query_chunk_size=16, key_chunk_size=12),
    "local": dict(block_size=16),
}


def _arrays(rng, n_heads=N, kv_heads=K, t=T, s=S):
  q = rng.normal(size=(B, t, n_heads, H))
  k, v = rng.normal(size=(2, B, s, kv_heads, H))
  return [jnp.asarray(x, jnp.float32) for x in (q, k, v)]


def _case(name, rng):
  """Keyword arguments of one test case, by name."""
  mask = rng.random((B, 1, T, S)) > 0.4          # varies per query and per key
  cases = {
      "plain": {},
      "causal": dict(is_causal=True),
      "padding": dict(query_seq_lengths=Q_LEN, key_value_seq_lengths=KV_LEN),
      "kv_padding_causal": dict(key_value_seq_lengths=KV_LEN, is_causal=True),
      "mask": dict(mask=mask),
      "bias": dict(bias=rng.normal(size=(1, N, T, S))),
      "bias_broadcast": dict(bias=rng.normal(size=(B, 1, 1, S))),
      "window": dict(local_window_size=(5, 3)),
      "window_causal": dict(local_window_size=(7, 2), is_causal=True),
      "window_self_only": dict(local_window_size=0),
      "everything": dict(mask=mask, bias=rng.normal(size=(B, N, T, S)), is_causal=True,
                         local_window_size=(9, 0), query_seq_lengths=Q_LEN,
                         key_value_seq_lengths=KV_LEN),
  }
  kwargs = dict(cases[name])
  for arg in ("query_seq_lengths", "key_value_seq_lengths", "bias", "mask"):
    if arg in kwargs:
      kwargs[arg] = jnp.asarray(kwargs[arg], jnp.float32 if arg == "bias" else None)
  return kwargs


CASES = ["plain", "causal", "padding", "kv_padding_causal", "mask", "bias", "bias_broadcast",
         "window", "window_causal", "window_self_only", "everything"]


def _setup(variant, case, seed=0, n_heads=N, kv_heads=K):
  rng = np.random.default_rng(seed)
  q, k, v = _arrays(rng, n_heads, kv_heads)
  kwargs = _case(case, rng)
  if variant == "local" and "local_window_size" not in kwargs:
    kwargs["local_window_size"] = (6, 4)  # local needs a window; the oracle gets the same
  mask_args = {a: kwargs.get(a) for a in ("mask", "is_causal", "local_window_size",
                                          "query_seq_lengths", "key_value_seq_lengths")}
  live = oracle.live_rows(B, n_heads, T, S, **{a: x for a, x in mask_args.items() if x is not None})
  return q, k, v, kwargs, jnp.asarray(live)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_and_gradients_match_jax(variant, case):
  q, k, v, kwargs, live = _setup(variant, case)
  attend = attention_zoo.get(variant, **VARIANTS[variant])
  cotangent = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32) * live

  def loss(fn, q, k, v, bias):
    return jnp.sum(fn(q, k, v, **{**kwargs, "bias": bias}) * cotangent)

  bias = kwargs.pop("bias", None)
  argnums = (1, 2, 3, 4) if bias is not None else (1, 2, 3)
  want = jax.value_and_grad(loss, argnums)(oracle.reference, q, k, v, bias)
  got = jax.value_and_grad(loss, argnums)(attend, q, k, v, bias)
  out_want = oracle.reference(q, k, v, bias, **kwargs) * live
  out_got = attend(q, k, v, bias, **kwargs)
  np.testing.assert_allclose(out_got * live, out_want, atol=2e-6, rtol=2e-5)
  np.testing.assert_array_equal(out_got * (1 - live), 0.0)  # rows with no key: zeros
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kv_heads", [1, 4])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_grouped_query_heads(variant, kv_heads):
  """K=1 (multi-query) and K=N (no grouping); K=2 < N=4 is the default above."""
  q, k, v, kwargs, live = _setup(variant, "everything", kv_heads=kv_heads)
  attend = attention_zoo.get(variant, **VARIANTS[variant])
  loss = lambda fn, q, k, v: jnp.sum(fn(q, k, v, **kwargs) * live)
  want = jax.grad(functools.partial(loss, oracle.reference), (0, 1, 2))(q, k, v)
  got = jax.grad(functools.partial(loss, attend), (0, 1, 2))(q, k, v)
  np.testing.assert_allclose(attend(q, k, v, **kwargs) * live,
                             oracle.reference(q, k, v, **kwargs) * live, atol=2e-6, rtol=2e-5)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("case", ["plain", "everything"])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_is_as_accurate_as_jax(variant, case, dtype):
  """Half-precision inputs: error against the float32 result on the same (rounded) inputs
  is within one half-precision rounding of the output, as JAX's own is."""
  q, k, v, kwargs, live = _setup(variant, case)
  q, k, v = (x.astype(dtype) for x in (q, k, v))
  exact = oracle.reference(*(x.astype(jnp.float32) for x in (q, k, v)), **kwargs) * live
  out = attention_zoo.get(variant, **VARIANTS[variant])(q, k, v, **kwargs)
  assert out.dtype == dtype
  ulp = float(jnp.finfo(dtype).eps)
  np.testing.assert_allclose(out.astype(jnp.float32) * live, exact, rtol=ulp, atol=ulp)


@pytest.mark.parametrize("variant", ["chunked", "local"])
def test_blocks_larger_than_inputs_and_single_rows(variant):
  """Chunk sizes above T and S, and T = 1 (one decoding step), are handled."""
  rng = np.random.default_rng(3)
  for t, s in ((1, 45), (37, 1), (5, 7)):
    q, k, v = _arrays(rng, t=t, s=s)
    kwargs = dict(local_window_size=(50, 50)) if variant == "local" else {}
    got = attention_zoo.get(variant)(q, k, v, **kwargs)
    np.testing.assert_allclose(got, oracle.reference(q, k, v, **kwargs), atol=2e-6, rtol=2e-5)


@pytest.mark.parametrize("case", ["plain", "everything"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bfloat16_gradients_are_as_accurate_as_jax(variant, case):
  """bfloat16 gradients: error against float32 gradients on the same (rounded) inputs is
  at most JAX's own bfloat16 error (plus one bfloat16 rounding of the largest gradient)."""
  q, k, v, kwargs, live = _setup(variant, case)
  q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
  cotangent = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32) * live

  def grads(fn, dtype):
    loss = lambda q, k, v: jnp.sum(fn(q, k, v, **kwargs).astype(jnp.float32) * cotangent)
    return jax.grad(loss, (0, 1, 2))(*(x.astype(dtype) for x in (q, k, v)))

  exact = grads(oracle.reference, jnp.float32)
  ours = grads(attention_zoo.get(variant, **VARIANTS[variant]), jnp.bfloat16)
  theirs = grads(oracle.reference, jnp.bfloat16)
  ulp = float(jnp.finfo(jnp.bfloat16).eps)
  for o, t, e in zip(ours, theirs, exact):
    assert o.dtype == jnp.bfloat16
    error = float(jnp.abs(o.astype(jnp.float32) - e).max())
    jax_error = float(jnp.abs(t.astype(jnp.float32) - e).max())
    assert error <= jax_error + ulp * float(jnp.abs(e).max()), (error, jax_error)
