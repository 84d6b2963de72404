"""Dense softmax attention: the reference every exact variant must equal."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from attention_zoo import masking, validation

NAME = "softmax"


def to_blocks_layout(query, key, value, K: int):
  """[B,T,N,H], [B,S,K,H] x2 -> q [B,K,G,T,H], k and v [B,K,S,H]."""
  B, T, N, H = query.shape
  q = query.reshape(B, T, K, N // K, H).transpose(0, 2, 3, 1, 4)
  return q, key.transpose(0, 2, 1, 3), value.transpose(0, 2, 1, 3)


def from_blocks_layout(out):
  """[B,K,G,T,H] -> [B,T,N,H]."""
  B, K, G, T, H = out.shape
  return out.transpose(0, 3, 1, 2, 4).reshape(B, T, K * G, H)


def softmax_attention(query, key, value, bias=None, mask=None, *, scale=None, is_causal=False,
                      query_seq_lengths=None, key_value_seq_lengths=None,
                      local_window_size=None):
  """Softmax attention with the semantics of `jax.nn.dot_product_attention`.

  Time and memory O(T·S). Logits, softmax and the value sum are float32; the output
  has the query's dtype. A query row that can attend no key (masked out, padding)
  returns zeros.
  """
  dims = validation.check_inputs(NAME, query, key, value, bias, mask,
                                 query_seq_lengths=query_seq_lengths,
                                 key_value_seq_lengths=key_value_seq_lengths)
  window = validation.normalize_window(NAME, local_window_size)
  scale = validation.check_scale(NAME, scale)
  scale = 1.0 / np.sqrt(dims.H) if scale is None else scale

  q, k, v = to_blocks_layout(query, key, value, dims.K)
  logits = jnp.einsum("bkgth,bksh->bkgts", q, k, preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits = logits + masking.split_heads(bias, dims.K).astype(jnp.float32)
  ok = masking.allowed(jnp.arange(dims.T), jnp.arange(dims.S),
                       mask=masking.split_heads(mask, dims.K), is_causal=is_causal,
                       window=window, q_len=query_seq_lengths, kv_len=key_value_seq_lengths)
  probs = masked_softmax(logits, ok)
  out = jnp.einsum("bkgts,bksh->bkgth", probs.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  return from_blocks_layout(out).astype(query.dtype)


def masked_softmax(logits, ok):
  """Softmax over the last axis restricted to `ok`; rows with no allowed entry give zeros."""
  if ok is not None:
    logits = jnp.where(ok, logits, -jnp.inf)
  # The shift cancels in the ratio, so it carries no gradient (as in jax.nn.softmax).
  row_max = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  unnormalized = jnp.exp(logits - row_max)
  total = jnp.sum(unnormalized, axis=-1, keepdims=True)
  return unnormalized / jnp.where(total > 0, total, 1.0)
