"""Which (query block, key block) pairs the blocked kernel computes, beyond causality and the
window: segment ids and mask functions rule blocks out, decided once per call (as
FlexAttention's block mask), and the loops' bounds are narrowed to the blocks left.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def pad_edge(x, size):
  """Ids [B, n] padded to [B, size] with their last id: padding widens no block's range."""
  return jnp.pad(x, ((0, 0), (0, size - x.shape[1])), mode="edge")


def segment_visits(q_ids, kv_ids):
  """bool [nq, nk]: may some query of block qb share a segment with some key of block kb
  (in any sequence of the batch)? From each block's id range: blocks whose ranges do not
  overlap share no id. Exact for packed rows (ids that never decrease along a row), a
  superset (never a wrong skip) for any other numbering. q_ids [nq, B, bq], kv_ids
  [nk, B, bk]."""
  q_lo, q_hi = q_ids.min(-1)[:, None], q_ids.max(-1)[:, None]      # [nq, 1, B]
  k_lo, k_hi = kv_ids.min(-1)[None], kv_ids.max(-1)[None]          # [1, nk, B]
  return ((q_lo <= k_hi) & (k_lo <= q_hi)).any(-1)


def mask_visits(plan, B, K, G, consts):
  """bool [nq, nk]: does mask_mod allow some pair of block (qb, kb) (positions inside T
  and S only)? Evaluated block by block (a map over the grid), once per call."""
  def any_allowed(index):
    qb, kb = index // plan.nk, index % plan.nk
    b, h, q_idx, kv_idx = plan.indices(qb, kb, B, K, G)
    inside = (q_idx < plan.T) & (kv_idx < plan.S)
    return jnp.any(plan.mask_mod(b, h, q_idx, kv_idx, *consts) & inside)
  return jax.lax.map(any_allowed, jnp.arange(plan.nq * plan.nk)).reshape(plan.nq, plan.nk)


def narrow(bounds, visits, line):
  """Loop bounds [lo, hi) cut to the first and last block of `line(visits)` to compute:
  packed rows and most masks visit one contiguous run of blocks per block row, so the loop
  never reaches the others (any block inside the run but not visited is skipped by cond)."""
  if visits is None:
    return bounds
  visits = line(visits)
  index = jnp.arange(visits.shape[0], dtype=jnp.int32)
  first = jnp.min(jnp.where(visits, index, visits.shape[0]))
  last = jnp.max(jnp.where(visits, index, -1)) + 1
  lo = jnp.maximum(bounds[0], first)
  return lo, jnp.maximum(lo, jnp.minimum(bounds[1], last))
