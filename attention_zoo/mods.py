"""Score and mask functions for `softmax`, `chunked` and `local` (FlexAttention's interface).

    score_mod(score, b, h, q_idx, kv_idx) -> score     mask_mod(b, h, q_idx, kv_idx) -> bool

The arguments are int arrays that broadcast against a block of logits [B, K, G, tq, tk]
(`h` is the query head, 0..N-1): write each function as if for one (b, h, q_idx, kv_idx),
with jnp operations and indexing (`table[h, q_idx - kv_idx]` works). `chunked` calls them
block by block and never builds a [T, S] array; gradients reach the arrays a score_mod
captures (a learned table, for instance). Make each function once and reuse it: it is a
static argument, compiled per function object.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def alibi(num_heads: int):
  """ALiBi (Press et al. 2022): score − m_h·|q_idx − kv_idx|, slopes m_h = 2^(−8(h+1)/N)
  (causal: the paper's m_h·(kv_idx − q_idx); bidirectional: its symmetric form)."""
  slopes = jnp.asarray(2.0 ** (-8.0 * (np.arange(num_heads) + 1) / num_heads), jnp.float32)

  def score_mod(score, b, h, q_idx, kv_idx):
    del b
    return score - slopes[h] * jnp.abs(q_idx - kv_idx).astype(jnp.float32)
  return score_mod


def soft_cap(cap: float):
  """cap·tanh(score / cap) (Gemma 2); also the `logit_soft_cap` argument."""
  def score_mod(score, b, h, q_idx, kv_idx):
    del b, h, q_idx, kv_idx
    return cap * jnp.tanh(score / cap)
  return score_mod


def relative_bucket(relative, num_buckets: int = 32, max_distance: int = 128,
                    bidirectional: bool = True):
  """T5's bucket of a relative position kv_idx − q_idx: exact for small distances,
  logarithmic up to `max_distance`, one bucket beyond (as in T5's reference code)."""
  relative = jnp.asarray(relative)
  bucket = jnp.zeros_like(relative)
  if bidirectional:
    num_buckets //= 2
    bucket = jnp.where(relative > 0, num_buckets, 0)
    distance = jnp.abs(relative)
  else:
    distance = jnp.maximum(-relative, 0)
  exact = num_buckets // 2
  log_ratio = jnp.log(jnp.maximum(distance, 1) / exact) / np.log(max_distance / exact)
  far = exact + (log_ratio * (num_buckets - exact)).astype(relative.dtype)
  far = jnp.minimum(far, num_buckets - 1)
  return bucket + jnp.where(distance < exact, distance, far)


def relative_bias(table, max_distance: int = 128, bidirectional: bool = True):
  """T5-style learned relative bias: score + table[h, bucket(kv_idx − q_idx)], `table`
  float [N, num_buckets] (differentiable: pass the parameter itself)."""
  num_buckets = table.shape[1]

  def score_mod(score, b, h, q_idx, kv_idx):
    del b
    bucket = relative_bucket(kv_idx - q_idx, num_buckets, max_distance, bidirectional)
    return score + table[h, bucket].astype(jnp.float32)
  return score_mod


def causal(b, h, q_idx, kv_idx):
  """mask_mod: kv_idx <= q_idx."""
  del b, h
  return kv_idx <= q_idx


def sliding_window(left: int, right: int = 0):
  """mask_mod: q_idx − left <= kv_idx <= q_idx + right."""
  def mask_mod(b, h, q_idx, kv_idx):
    del b, h
    return (q_idx - kv_idx <= left) & (kv_idx - q_idx <= right)
  return mask_mod


def prefix_lm(prefix_lengths):
  """mask_mod of a prefix LM: every query sees the first prefix_lengths[b] keys, and the
  keys at or before it (int [B])."""
  prefix_lengths = jnp.asarray(prefix_lengths)

  def mask_mod(b, h, q_idx, kv_idx):
    del h
    return (kv_idx <= q_idx) | (kv_idx < prefix_lengths[b])
  return mask_mod


def document(ids):
  """mask_mod of packed documents: query and key in the same document, `ids` int [B, T]
  (T = S). `segment_ids=ids` means the same and is cheaper to plan (block id ranges)."""
  ids = jnp.asarray(ids)

  def mask_mod(b, h, q_idx, kv_idx):
    del h
    return ids[b, q_idx] == ids[b, kv_idx]
  return mask_mod


def and_masks(*mask_mods):
  """A mask_mod allowing what every one of `mask_mods` allows."""
  def mask_mod(b, h, q_idx, kv_idx):
    out = True
    for fn in mask_mods:
      out = out & fn(b, h, q_idx, kv_idx)
    return out
  return mask_mod
