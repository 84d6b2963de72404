"""Dense softmax attention: the reference every exact variant must equal."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attention_zoo import implementations, masking, validation

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


@validation.call_forms(NAME)
# On a CPU, None keeps the dense xla code: it is the dense reference that the papers' tables
# and the benchmark measure (O(T·S) memory), and the one with forward-mode derivatives; the
# fused cpu kernel is `chunked`'s default there, and softmax's when asked for by name.
@implementations.dispatching(NAME, cpu_kernel_by_default=False)
def softmax_attention(query, key, value, bias=None, mask=None, *, scale=None, is_causal=False,
                      query_seq_lengths=None, key_value_seq_lengths=None,
                      local_window_size=None, segment_ids=None, logit_soft_cap=None,
                      sinks=None, score_mod=None, mask_mod=None, return_residual=False,
                      implementation=None):
  """Softmax attention with the semantics of `jax.nn.dot_product_attention`, and
  `segment_ids` (int [B, T], or a (query [B, T], key [B, S]) pair): a query attends only
  keys of its own segment (packed sequences); `logit_soft_cap`: logits = cap·tanh(logits /
  cap) after scale and bias, before masking (Gemma 2); `sinks` (float [N]): a logit per
  query head that joins every row's normaliser and adds no value (StreamingLLM, gpt-oss),
  so a row may give less than all of its weight to its keys. `score_mod(score, b, h, q_idx,
  kv_idx) -> score` (after scale and bias, before the cap) and `mask_mod(b, h, q_idx, kv_idx)
  -> bool` as FlexAttention's, called once on broadcast index arrays of the whole [B, N, T, S]
  grid: the dense oracle of `chunked`'s blockwise ones (attention_zoo/mods.py has examples).
  `implementation`: None, "xla" (this code), "cudnn", "pallas" or "cpu" (attention_zoo/
  implementations.py). `return_residual=True` returns (output, residual) as
  `jax.nn.dot_product_attention`: the residual [B, T, N] (key dtype) is each row's
  log-sum-exp of its allowed logits (and its sink), -inf for a row with no key and no sink
  (JAX's xla path gives a large negative number there), and here it is differentiable.

  Time and memory O(T·S). Logits, softmax and the value sum are float32; the output
  has the query's dtype. A query row that can attend no key (masked out, padding)
  returns zeros, whatever the values hold. A NaN in query row i makes row i NaN; a NaN
  in key j makes NaN exactly the rows that may attend j; a NaN value reaches the rows
  that attend it and may reach other rows of its head (0·NaN in the value product).
  """
  dims = validation.check_inputs(NAME, query, key, value, bias, mask,
                                 query_seq_lengths=query_seq_lengths,
                                 key_value_seq_lengths=key_value_seq_lengths)
  window = validation.normalize_window(NAME, local_window_size)
  scale = validation.default_scale(NAME, scale, dims.H)
  del implementation  # chosen by implementations.dispatching: this is the xla one

  q, k, v = to_blocks_layout(query, key, value, dims.K)
  logits = jnp.einsum("bkgth,bksh->bkgts", q, k, preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits = logits + masking.split_heads(bias, dims.K).astype(jnp.float32)
  index = grid_indices(dims.B, dims.K, dims.G, dims.T, dims.S)
  if score_mod is not None:
    logits = score_mod(logits, *index).astype(jnp.float32)
  logits = soft_cap(logits, logit_soft_cap)
  ok = masking.allowed(jnp.arange(dims.T), jnp.arange(dims.S),
                       mask=masking.split_heads(mask, dims.K), is_causal=is_causal,
                       window=window, q_len=query_seq_lengths, kv_len=key_value_seq_lengths,
                       segments=segment_ids)
  if mask_mod is not None:
    ok = mask_mod(*index) if ok is None else ok & mask_mod(*index)
  probs, empty, lse = masked_softmax(logits, ok, sink_logits(sinks, dims.K))
  out = jnp.einsum("bkgts,bksh->bkgth", probs.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  # Zero weights times a NaN value are NaN: rows with no key are zeroed after the product.
  out = from_blocks_layout(jnp.where(empty, 0.0, out)).astype(query.dtype)
  return (out, residual_layout(lse[..., 0]).astype(key.dtype)) if return_residual else out


def residual_layout(lse):
  """Row log-sum-exps [B, K, G, T] -> [B, T, N], the layout of JAX's residual."""
  B, K, G, T = lse.shape
  return lse.transpose(0, 3, 1, 2).reshape(B, T, K * G)


def check_options(implementation=None):
  implementations.check(NAME, implementation)


def grid_indices(B, K, G, T, S):
  """FlexAttention's (b, h, q_idx, kv_idx), broadcast against logits [B, K, G, T, S]."""
  return (jnp.arange(B).reshape(B, 1, 1, 1, 1), jnp.arange(K * G).reshape(1, K, G, 1, 1),
          jnp.arange(T).reshape(1, 1, 1, T, 1), jnp.arange(S).reshape(1, 1, 1, 1, S))


def soft_cap(logits, cap):
  """cap·tanh(logits / cap) (float32), or the logits when cap is None."""
  return logits if cap is None else cap * jnp.tanh(logits / cap)


def sink_logits(sinks, K: int):
  """float [N] -> [1, K, G, 1, 1] in the kernels' layout (None stays None)."""
  return None if sinks is None else sinks.astype(jnp.float32).reshape(1, K, -1, 1, 1)


def masked_softmax(logits, ok, sinks=None):
  """(softmax over the last axis restricted to `ok`, rows with no allowed entry, the rows'
  log-sum-exp): those rows give zero weights (and lse -inf, or the sink). A NaN logit that
  is allowed makes its row NaN (never zero). `sinks` [1, K, G, 1, 1]: one more logit per
  head in every row's normaliser (no value)."""
  if ok is not None:
    logits = jnp.where(ok, logits, -jnp.inf)
  # The shift cancels in the ratio, so it carries no gradient (as in jax.nn.softmax).
  row_max = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  unnormalized = jnp.exp(logits - row_max)
  total = jnp.sum(unnormalized, axis=-1, keepdims=True)
  empty = total == 0  # False for a NaN total
  if sinks is not None:  # after `empty`: a row with no key still gives zeros
    row_max = jnp.maximum(row_max, jax.lax.stop_gradient(sinks))
    unnormalized = jnp.exp(logits - row_max)
    total = jnp.sum(unnormalized, axis=-1, keepdims=True) + jnp.exp(sinks - row_max)
  nothing = total == 0  # `empty` and no sink: log(0), with a gradient of 0, not NaN
  lse = jnp.where(nothing, -jnp.inf, row_max + jnp.log(jnp.where(nothing, 1.0, total)))
  return unnormalized / jnp.where(empty, 1.0, total), empty, lse
