"""return_residual: each query row's log-sum-exp next to the output, as
`jax.nn.dot_product_attention` returns it, from every variant that takes it (the others
refuse it: tests/test_contract.py); equal to the formula, and differentiable."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_zoo
from attention_zoo import registry

# ring too, on a mesh: tests/test_ring.py.
TAKING = [n for n in attention_zoo.names() if "return_residual" not in registry.entry(n).refuses
          and not registry.entry(n).splits_sequences]
OPTIONS = {"chunked": dict(query_chunk_size=4, key_chunk_size=3),
           "local": dict(block_size=4, local_window_size=(4, 2))}
B, T, S, N, K, H = 2, 13, 11, 4, 2, 8


def _arrays(dtype=jnp.float32):
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(B, T, N, H)), dtype)
  k, v = (jnp.asarray(rng.normal(size=(B, S, K, H)), dtype) for _ in range(2))
  return q, k, v, jnp.asarray(rng.normal(size=(N,)), jnp.float32)


def _formula(q, k, allowed, sinks=None, cap=None):
  """log sum_j exp(s_ij) over allowed keys (and the sink), [B, T, N]; -inf with none."""
  k = jnp.repeat(k, N // K, axis=2).astype(jnp.float32)
  s = jnp.einsum("btnh,bsnh->bnts", q.astype(jnp.float32), k) / np.sqrt(H)
  s = s if cap is None else cap * jnp.tanh(s / cap)
  s = jnp.where(allowed, s, -jnp.inf)
  if sinks is not None:
    s = jnp.concatenate([s, jnp.broadcast_to(sinks[None, :, None, None], s.shape[:3] + (1,))],
                        axis=-1)
  return jax.nn.logsumexp(s, axis=-1).transpose(0, 2, 1)


@pytest.mark.parametrize("name", TAKING)
@pytest.mark.parametrize("with_sinks", [False, True])
def test_residual_is_the_rows_log_sum_exp(name, with_sinks):
  """Causal, padded (the first sequence has no key at all), GQA, soft cap, sinks; sizes
  that are no multiple of the blocks."""
  q, k, v, sinks = _arrays()
  kv_len = jnp.array([0, 9])
  extra = dict(sinks=sinks) if with_sinks else {}
  attend = attention_zoo.get(name, **OPTIONS.get(name, {}))
  out, residual = attend(q, k, v, is_causal=True, key_value_seq_lengths=kv_len,
                         logit_soft_cap=5.0, return_residual=True, **extra)
  np.testing.assert_array_equal(out, attend(q, k, v, is_causal=True, logit_soft_cap=5.0,
                                            key_value_seq_lengths=kv_len, **extra))
  i, j = np.arange(T)[:, None], np.arange(S)[None, :]
  allowed = (j <= i) & (j < np.asarray(kv_len)[:, None, None, None])
  if name == "local":
    allowed &= (j >= i - 4) & (j <= i + 2)
  want = _formula(q, k, allowed, sinks if with_sinks else None, cap=5.0)
  assert residual.shape == (B, T, N) and residual.dtype == k.dtype
  np.testing.assert_allclose(residual, want, atol=1e-5, rtol=1e-5)
  assert np.all(np.isneginf(residual[0])) != with_sinks  # no key: log 0, or the sink alone


@pytest.mark.parametrize("name", TAKING)
def test_residual_gradients_equal_the_dense_ones(name):
  q, k, v, sinks = _arrays()
  call = dict(is_causal=True, key_value_seq_lengths=jnp.array([5, 11]), return_residual=True,
              sinks=sinks, local_window_size=(4, 2) if name == "local" else None)
  weights = jnp.asarray(np.random.default_rng(1).normal(size=(B, T, N)), jnp.float32)

  def loss(attend):
    def f(q, k, v, sinks):
      out, residual = attend(q, k, v, **{**call, "sinks": sinks})
      return jnp.sum(jnp.sin(out)) + jnp.sum(residual * weights)
    return jax.grad(f, (0, 1, 2, 3))(q, k, v, sinks)

  options = {a: x for a, x in OPTIONS.get(name, {}).items() if a != "local_window_size"}
  for got, want in zip(loss(attention_zoo.get(name, **options)),
                       loss(attention_zoo.get("softmax"))):
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)


def test_residual_matches_jax_and_keeps_its_forms():
  """Equal to jax.nn.dot_product_attention's residual; unbatched calls give [T, N]; in the
  key's dtype; a non-bool flag is refused."""
  q, k, v, _ = _arrays(jnp.bfloat16)
  chunked = attention_zoo.get("chunked", **OPTIONS["chunked"])
  out, residual = chunked(q, k, v, is_causal=True, return_residual=True)
  want_out, want = jax.nn.dot_product_attention(q, k, v, is_causal=True, return_residual=True)
  assert residual.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.float32(residual), np.float32(want), atol=0.02, rtol=0.01)
  single = chunked(q[0], k[0], v[0], is_causal=True, return_residual=True)
  assert single[0].shape == (T, N, H) and single[1].shape == (T, N)
  np.testing.assert_array_equal(single[1], residual[0])
  with pytest.raises(ValueError, match=r"^chunked: return_residual must be a bool, got 1"):
    chunked(q, k, v, return_residual=1)
