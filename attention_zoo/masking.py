"""The one rule that decides which key each query may attend, shared by every exact variant.

Inside the kernels tensors are laid out [B, K, G, T, H] (queries) and [B, K, S, H]
(keys, values), so that logits are [B, K, G, T, S] and a grouped-query attention
needs no copy of the key/value heads. `mask` and `bias` arrive as [B|1, N|1, T|1, S|1].
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np


def split_heads(x, K: int):
  """[B|1, N|1, T|1, S|1] -> [B|1, K|1, G|1, T|1, S|1]."""
  if x is None:
    return None
  b, n, t, s = x.shape
  return x.reshape(b, K, n // K, t, s) if n > 1 else x.reshape(b, 1, 1, t, s)


def merge_heads(x, n: int):
  """Inverse of `split_heads` for an array whose head axis had size n."""
  b, _, _, t, s = x.shape
  return x.reshape(b, n, t, s)


def allowed(q_pos, k_pos, *, mask=None, is_causal=False, window=None, q_len=None,
            kv_len=None, segments=None):
  """Boolean [B|1, K|1, G|1, tq, tk]: may query q_pos[i] attend key k_pos[j]?

  Follows `jax.nn.dot_product_attention`: causal means j <= i (top-left aligned),
  a window (left, right) means i - left <= j <= i + right, and positions at or past
  `q_len` / `kv_len` (int [B], or a scalar) are padding. `segments`: (query ids [B, tq],
  key ids [B, tk]) of these positions; a query attends only keys of its own segment.
  Returns None when every pair is allowed, so callers skip the select entirely.
  """
  qp, kp = q_pos[:, None], k_pos[None, :]
  conditions = []
  if mask is not None:
    conditions.append(mask)
  if is_causal:
    conditions.append(kp <= qp)
  if window is not None:
    # As differences, with the sizes capped at the largest int32: no window, however
    # large, overflows the position arithmetic, and none beyond it allows more.
    left, right = (min(w, np.iinfo(np.int32).max) for w in window)
    conditions.append((qp - kp <= left) & (kp - qp <= right))
  if q_len is not None:
    conditions.append(qp < jnp.reshape(q_len, (-1, 1, 1, 1, 1)))
  if kv_len is not None:
    conditions.append(kp < jnp.reshape(kv_len, (-1, 1, 1, 1, 1)))
  if segments is not None:
    q_ids, k_ids = segments
    conditions.append(q_ids[:, None, None, :, None] == k_ids[:, None, None, None, :])
  if not conditions:
    return None
  return functools.reduce(jnp.logical_and, conditions)
