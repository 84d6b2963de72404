"""The block arithmetic of exact attention computed a block of keys at a time, shared by
`chunked` (blocks on one device) and `ring` (blocks passed between devices).

Layout (see masking.py): queries [B, K, G, q, H], keys and values [B, K, k, H], logits
[B, K, G, q, k], with -inf wherever attention is not allowed.
"""

from __future__ import annotations

import jax.numpy as jnp


def init(q_blk):
  """(row max, row sum, accumulator) before any key block: nothing seen yet."""
  rows = q_blk.shape[:-1]
  return (jnp.full(rows, -jnp.inf, jnp.float32), jnp.zeros(rows, jnp.float32),
          jnp.zeros(q_blk.shape, jnp.float32))


def fold(carry, logits, v_blk):
  """Folds one block of logits and its values into the running softmax-weighted sum."""
  row_max, row_sum, acc = carry
  new_max = jnp.maximum(row_max, logits.max(axis=-1))
  shift = jnp.where(new_max == -jnp.inf, 0.0, new_max)  # rows with nothing allowed yet
  p = jnp.exp(logits - shift[..., None])
  correction = jnp.exp(row_max - shift)
  acc = acc * correction[..., None] + jnp.einsum(
      "bkgqs,bksh->bkgqh", p.astype(v_blk.dtype), v_blk, preferred_element_type=jnp.float32)
  return new_max, row_sum * correction + p.sum(axis=-1), acc


def finish(carry, sinks=None):
  """(output float32, log-sum-exp): rows with no allowed key give zeros (even where a NaN
  value met their zero weights) and lse = +inf, so that exp(logits - lse) is 0 for them in
  the backward pass. A NaN row sum (a NaN logit it may attend) stays NaN. `sinks`
  [1, K, G, 1]: a logit per head folded into every row's normaliser, with no value."""
  row_max, row_sum, acc = carry
  empty = row_sum == 0
  if sinks is not None:
    new_max = jnp.maximum(row_max, sinks)
    correction = jnp.exp(row_max - new_max)
    row_max, row_sum = new_max, row_sum * correction + jnp.exp(sinks - new_max)
    acc = acc * correction[..., None]
  out = jnp.where(empty[..., None], 0.0, acc / jnp.where(empty, 1.0, row_sum)[..., None])
  return out, jnp.where(empty, jnp.inf, row_max + jnp.log(row_sum))


def block_gradients(p, do, delta, q_blk, k_blk, v_blk):
  """One block's (ds, dq, dk, dv) from its probabilities p = exp(logits - lse) and the
  output gradient do; dq and dk are still to be multiplied by the logits' scale."""
  ds, dv = logit_gradients(p, do, delta, v_blk)
  return (ds, *qk_gradients(ds, q_blk, k_blk), dv)


def logit_gradients(p, do, delta, v_blk):
  """(d logits, dv) of one block: the softmax's own backward."""
  dv = jnp.einsum("bkgqs,bkgqh->bksh", p.astype(do.dtype), do,
                  preferred_element_type=jnp.float32)
  dp = jnp.einsum("bkgqh,bksh->bkgqs", do, v_blk, preferred_element_type=jnp.float32)
  return p * (dp - delta[..., None]), dv


def qk_gradients(ds, q_blk, k_blk):
  """(dq, dk) of one block from the gradient of its (unscaled) q·k products."""
  dq = jnp.einsum("bkgqs,bksh->bkgqh", ds.astype(k_blk.dtype), k_blk,
                  preferred_element_type=jnp.float32)
  dk = jnp.einsum("bkgqs,bkgqh->bksh", ds.astype(q_blk.dtype), q_blk,
                  preferred_element_type=jnp.float32)
  return dq, dk
