"""Chunked (memory-efficient) attention: softmax attention computed block by block.

The forward pass walks query blocks (a scan) and, for each, only the key blocks that
causality, the window and the padding lengths leave reachable (a loop with dynamic
bounds), keeping a running max, sum and accumulator (the online softmax of Rabe &
Staats 2021 and FlashAttention). It saves only the output and the per-row
log-sum-exp, so the backward pass (a `jax.custom_vjp`, FlashAttention-2 style)
recomputes each block's probabilities: forward and backward memory are O(T + S),
never O(T·S), apart from a full-size bias's own gradient.

Kernel layout: queries [nq, B, K, G, bq, H], keys and values [nk, B, K, bk, H].
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from attention_zoo import (block_skipping, implementations, masking, online_softmax, softmax,
                           validation)

NAME = "chunked"
# Measured on the 2-core CPU (T=4096, 8 heads, head dim 64; `python launch.py bench`):
# 512 x 256 blocks match 512 x 512 forward (119 ms, ~2/3 of the matmul peak) and are the
# fastest forward+backward (660 ms; causal 358 ms); 1024-row and 256 x 256 blocks are
# 10-60% slower. A 512 x 256 float32 logit block per head (512 KiB) stays in L2 cache.
# The same on an AMD EPYC of half that matmul peak (Zen 4): 512 x 256 fastest, forward and
# forward+backward (`configs/bench/blocks.py` checks a new CPU).
DEFAULT_QUERY_CHUNK_SIZE = 512
DEFAULT_KEY_CHUNK_SIZE = 256


def check_options(query_chunk_size=None, key_chunk_size=None, implementation=None):
  """Chunk sizes: None, the xla code's defaults, or positive ints (the xla code's own option:
  given, `implementation=None` runs the xla code, and another implementation refuses them)."""
  validation.check_positive(NAME, **{name: size for name, size in (
      ("query_chunk_size", query_chunk_size), ("key_chunk_size", key_chunk_size))
                                     if size is not None})
  implementations.check(NAME, implementation)


@validation.call_forms(NAME)
@implementations.dispatching(NAME, check_options, cpu_kernel_by_default=True)
def chunked_attention(query, key, value, bias=None, mask=None, *, scale=None, is_causal=False,
                      query_seq_lengths=None, key_value_seq_lengths=None,
                      local_window_size=None, segment_ids=None, logit_soft_cap=None,
                      sinks=None, score_mod=None, mask_mod=None, return_residual=False,
                      query_chunk_size=None, key_chunk_size=None, implementation=None):
  """Equal to `softmax` (to float32 rounding) on every argument, in O(T + S) memory.

  Blocks that causality or the window rule out entirely are skipped, not computed
  and masked; so are blocks in which no query shares a segment with any key (`segment_ids`:
  decided once per call from each block's smallest and largest id, see `block_skipping`).
  `logit_soft_cap` and `sinks` as in `softmax` (the sinks join each row's normaliser once,
  after its last key block). `score_mod(score, b, h, q_idx, kv_idx)` and
  `mask_mod(b, h, q_idx, kv_idx)` (FlexAttention's; see attention_zoo/mods.py) are applied
  block by block with broadcast index arrays, never on a [T, S] array; gradients reach the
  arrays a score_mod captures (its closure is converted into explicit arguments). Blocks
  where mask_mod is False everywhere are skipped: which, is decided once per call by
  evaluating mask_mod block by block (attention_zoo/block_skipping.py). Lengths need not be
  multiples of the chunk sizes (None: 512 x 256), and chunk sizes above them are clipped to
  them. A query row that can attend no key returns zeros; NaN reaches the rows it does in
  `softmax`. Supports reverse-mode differentiation (not forward mode). `implementation`:
  None (on a CPU the fused cpu kernel where it honours the call, chunk sizes not given),
  "xla" (this code), "cudnn", "pallas" or "cpu" (attention_zoo/implementations.py).
  `return_residual` as in `softmax`: the log-sum-exp the forward keeps for its backward,
  differentiable too.
  """
  check_options(query_chunk_size, key_chunk_size, implementation)
  return blocked_attention(NAME, query, key, value, bias, mask, scale=scale,
                           is_causal=is_causal, query_seq_lengths=query_seq_lengths,
                           key_value_seq_lengths=key_value_seq_lengths,
                           local_window_size=local_window_size, segment_ids=segment_ids,
                           logit_soft_cap=logit_soft_cap, sinks=sinks, score_mod=score_mod,
                           mask_mod=mask_mod, return_residual=return_residual,
                           query_chunk_size=query_chunk_size or DEFAULT_QUERY_CHUNK_SIZE,
                           key_chunk_size=key_chunk_size or DEFAULT_KEY_CHUNK_SIZE)


def blocked_attention(variant, query, key, value, bias, mask, *, scale, is_causal,
                      query_seq_lengths, key_value_seq_lengths, local_window_size,
                      query_chunk_size, key_chunk_size, segment_ids=None, logit_soft_cap=None,
                      sinks=None, score_mod=None, mask_mod=None, return_residual=False,
                      count_blocks=False):
  """Checks the arguments, pads to whole blocks and runs the block kernel."""
  dims = validation.check_inputs(variant, query, key, value, bias, mask,
                                 query_seq_lengths=query_seq_lengths,
                                 key_value_seq_lengths=key_value_seq_lengths)
  window = validation.clip_window(validation.normalize_window(variant, local_window_size),
                                  dims.T, dims.S)
  B, T, S, K, G, H = dims.B, dims.T, dims.S, dims.K, dims.G, dims.H
  plan = _Plan(T=T, S=S, bq=min(query_chunk_size, T), bk=min(key_chunk_size, S),
               scale=validation.default_scale(variant, scale, H), is_causal=bool(is_causal),
               window=window, cap=validation.check_soft_cap(variant, logit_soft_cap))
  Tp, Sp = plan.nq * plan.bq, plan.nk * plan.bk

  q = _pad_axis(query, 1, Tp).reshape(B, plan.nq, plan.bq, K, G, H).transpose(1, 0, 3, 4, 2, 5)
  k, v = (_pad_axis(x, 1, Sp).reshape(B, plan.nk, plan.bk, K, H).transpose(1, 0, 3, 2, 4)
          for x in (key, value))
  bias, mask = (_pad_axis(_pad_axis(masking.split_heads(x, K), 3, Tp), 4, Sp)
                for x in (bias, mask))
  kv_len = key_value_seq_lengths
  if kv_len is None and Sp > S:
    kv_len = jnp.full((B,), S, jnp.int32)  # the padded keys are not attended
  extras = _Extras(sinks=None if sinks is None else
                   sinks.astype(jnp.float32).reshape(1, K, G, 1))
  if score_mod is not None:
    score_mod, consts = _converted(score_mod, jnp.zeros((B, K, G, plan.bq, plan.bk)),
                                   *plan.indices(0, 0, B, K, G))
    plan = dataclasses.replace(plan, score_mod=score_mod)
    extras = extras._replace(score_consts=consts)
  visits = []
  if segment_ids is not None:
    blocks = lambda ids, n, size, rows: (block_skipping.pad_edge(ids, n).reshape(B, rows, size)
                                         .transpose(1, 0, 2))
    segments = (blocks(segment_ids[0], Tp, plan.bq, plan.nq),
                blocks(segment_ids[1], Sp, plan.bk, plan.nk))
    extras = extras._replace(segments=segments)
    visits.append(block_skipping.segment_visits(*segments))
  if mask_mod is not None:
    mask_mod, consts = _converted(mask_mod, *plan.indices(0, 0, B, K, G))
    plan = dataclasses.replace(plan, mask_mod=mask_mod)
    extras = extras._replace(mask_consts=consts)
    visits.append(block_skipping.mask_visits(plan, B, K, G, consts))
  if visits:
    extras = extras._replace(visits=functools.reduce(jnp.logical_and, visits))
  if count_blocks:  # the debug entry point: how many blocks the forward pass folds
    return _forward(plan, q, k, v, bias, mask, query_seq_lengths, kv_len, extras)[2]
  out, lse = _attention(plan, q, k, v, bias, mask, query_seq_lengths, kv_len, extras)
  out = out.transpose(1, 0, 4, 2, 3, 5).reshape(B, Tp, K * G, H)[:, :T]
  if not return_residual:
    return out
  # lse is +inf on rows with no key (the backward's p = 0); their residual is log(0) = -inf,
  # or the sink's logit alone.
  empty = -jnp.inf if sinks is None else sinks.astype(jnp.float32).reshape(1, 1, K * G)
  lse = softmax.residual_layout(jnp.moveaxis(lse, 0, 3).reshape(B, K, G, Tp))[:, :T]
  return out, jnp.where(lse == jnp.inf, empty, lse).astype(key.dtype)


class _Extras(NamedTuple):
  """The traced arguments beyond q, k, v, bias, mask and lengths (None where not given)."""
  sinks: jax.Array | None = None            # [1, K, G, 1]
  segments: tuple | None = None             # query ids [nq, B, bq], key ids [nk, B, bk]
  visits: jax.Array | None = None           # bool [nq, nk]: the blocks to compute
  score_consts: tuple | None = None         # the arrays score_mod captured
  mask_consts: tuple | None = None          # the arrays mask_mod captured


def _converted(fn, *example):
  """fn with the arrays it closes over as trailing arguments (jax.closure_convert), so the
  custom VJP can differentiate them: (fn(*args, *consts), consts)."""
  converted, consts = jax.closure_convert(fn, *example)
  return _Hashable(converted), tuple(consts)


@dataclasses.dataclass(frozen=True, eq=False)
class _Hashable:
  """A converted function, hashed by identity (it is a field of the static plan)."""
  fn: Callable

  def __call__(self, *args):
    return self.fn(*args)


def visited_blocks(query, key, value, bias=None, mask=None, *, query_chunk_size,
                   key_chunk_size, **call):
  """The number of (query block, key block) pairs the forward pass computes for this call
  of `chunked` (batched [B, T, N, H] form): what causality, the window, the padding
  lengths and `segment_ids` leave after skipping. For tests and benchmarks."""
  call.setdefault("scale", None)
  call.setdefault("is_causal", False)
  for name in ("query_seq_lengths", "key_value_seq_lengths", "local_window_size"):
    call.setdefault(name, None)
  dims = validation.check_inputs(NAME, query, key, value, bias, mask)
  if call.get("segment_ids") is not None:
    call["segment_ids"] = validation.check_segment_ids(NAME, call["segment_ids"], dims.B,
                                                       dims.T, dims.S)
  return int(blocked_attention(NAME, query, key, value, bias, mask, **call,
                               query_chunk_size=query_chunk_size,
                               key_chunk_size=key_chunk_size, count_blocks=True))


def _pad_axis(x, axis, size):
  if x is None or x.shape[axis] in (1, size):
    return x
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad)


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Static description of the blocking; hashable, so it is a compile-time constant."""
  T: int
  S: int
  bq: int
  bk: int
  scale: float
  is_causal: bool
  window: tuple[int, int] | None
  cap: float | None = None  # logit_soft_cap
  score_mod: Callable | None = None  # (score, b, h, q_idx, kv_idx, *consts) -> score
  mask_mod: Callable | None = None   # (b, h, q_idx, kv_idx, *consts) -> bool

  @property
  def nq(self) -> int:
    return -(-self.T // self.bq)

  @property
  def nk(self) -> int:
    return -(-self.S // self.bk)

  def key_blocks(self, qb, q_max, kv_max):
    """[lo, hi): the key blocks that some query of block qb may attend."""
    i_first = qb * self.bq
    i_last = jnp.minimum(i_first + self.bq, q_max) - 1
    j_lo, j_hi = 0, kv_max
    if self.window is not None:
      j_lo = jnp.maximum(i_first - self.window[0], 0)
      j_hi = jnp.minimum(j_hi, i_last + self.window[1] + 1)
    if self.is_causal:
      j_hi = jnp.minimum(j_hi, i_last + 1)
    return _block_range(j_lo, j_hi, self.bk, empty=i_first > i_last)

  def query_blocks(self, kb, q_max, kv_max):
    """[lo, hi): the query blocks some query of which may attend key block kb."""
    j_first = kb * self.bk
    j_last = jnp.minimum(j_first + self.bk, kv_max) - 1
    i_lo, i_hi = 0, q_max
    if self.is_causal:
      i_lo = j_first
    if self.window is not None:
      i_lo = jnp.maximum(i_lo, j_first - self.window[1])
      i_hi = jnp.minimum(i_hi, j_last + self.window[0] + 1)
    return _block_range(i_lo, i_hi, self.bq, empty=j_first > j_last)

  def indices(self, qb, kb, B, K, G):
    """FlexAttention's index arguments for block (qb, kb), broadcast against the block's
    logits [B, K, G, bq, bk]: batch b, query head h, query and key positions."""
    b = jnp.arange(B).reshape(B, 1, 1, 1, 1)
    h = jnp.arange(K * G).reshape(1, K, G, 1, 1)
    q_idx = (qb * self.bq + jnp.arange(self.bq)).reshape(1, 1, 1, self.bq, 1)
    kv_idx = (kb * self.bk + jnp.arange(self.bk)).reshape(1, 1, 1, 1, self.bk)
    return b, h, q_idx, kv_idx

  def scores(self, q_blk, k_blk, bias, qb, kb):
    """Scaled (and biased) float32 q·k of one block, before score_mod and the soft cap."""
    s = jnp.einsum("bkgqh,bksh->bkgqs", q_blk, k_blk,
                   preferred_element_type=jnp.float32) * self.scale
    if bias is not None:
      s = s + self._block(bias, qb, kb).astype(jnp.float32)
    return s

  def modify(self, s, qb, kb, score_consts):
    """score_mod, then the soft cap (each where given)."""
    if self.score_mod is not None:
      B, K, G = s.shape[:3]
      s = self.score_mod(s, *self.indices(qb, kb, B, K, G), *score_consts).astype(jnp.float32)
    if self.cap is not None:
      s = self.cap * jnp.tanh(s / self.cap)
    return s

  def block_logits(self, q_blk, k_blk, bias, mask, qb, kb, q_len, kv_len, masked=True,
                   extras=None):
    """Float32 logits of one block (score_mod and cap applied) and, if `masked`, its allowed
    pairs (None when the block needs no mask)."""
    extras = extras or _Extras()
    s = self.modify(self.scores(q_blk, k_blk, bias, qb, kb), qb, kb, extras.score_consts)
    return s, (self.allowed(s.shape, mask, qb, kb, q_len, kv_len, extras) if masked else None)

  def allowed(self, shape, mask, qb, kb, q_len, kv_len, extras):
    """The allowed pairs of block (qb, kb): masking.allowed's rules and mask_mod."""
    segments = extras.segments
    ok = masking.allowed(qb * self.bq + jnp.arange(self.bq), kb * self.bk + jnp.arange(self.bk),
                         mask=self._block(mask, qb, kb), is_causal=self.is_causal,
                         window=self.window, q_len=q_len, kv_len=kv_len,
                         segments=None if segments is None else
                         (segments[0][qb], segments[1][kb]))
    if self.mask_mod is not None:
      allowed = self.mask_mod(*self.indices(qb, kb, *shape[:3]), *extras.mask_consts)
      ok = allowed if ok is None else ok & allowed
    return ok

  def per_block(self, body, mask, q_len, kv_len, extras):
    """body(masked, block, carry) -> carry, run with the mask built only on the blocks
    that straddle the diagonal, the window's edge or the padding: a block that every
    rule allows whole (most blocks, once sequences are long) skips building and applying
    it. A dense mask argument can forbid any pair, so it is applied on every block.
    With segments or a mask_mod, a block that `extras.visits` rules out is skipped whole
    (the carry passes unchanged) and every other block is masked."""
    if extras.visits is not None:
      visits = extras.visits
      return lambda qb, kb, carry: jax.lax.cond(
          visits[qb, kb], functools.partial(body, True), lambda qb, kb, carry: carry,
          qb, kb, carry)
    if mask is not None:
      return functools.partial(body, True)
    if not (self.is_causal or self.window is not None or q_len is not None
            or kv_len is not None):
      return functools.partial(body, False)
    q_min = self.nq * self.bq if q_len is None else jnp.min(q_len)
    kv_min = self.nk * self.bk if kv_len is None else jnp.min(kv_len)

    def run(qb, kb, carry):
      i_first, j_first = qb * self.bq, kb * self.bk
      i_last, j_last = i_first + self.bq - 1, j_first + self.bk - 1
      partial = (i_last >= q_min) | (j_last >= kv_min)
      if self.is_causal:
        partial |= j_last > i_first
      if self.window is not None:
        partial |= (j_first < i_last - self.window[0]) | (j_last > i_first + self.window[1])
      return jax.lax.cond(partial, functools.partial(body, True),
                          functools.partial(body, False), qb, kb, carry)
    return run

  def _block(self, x, qb, kb):
    if x is None:
      return None
    if x.shape[3] > 1:
      x = jax.lax.dynamic_slice_in_dim(x, qb * self.bq, self.bq, axis=3)
    if x.shape[4] > 1:
      x = jax.lax.dynamic_slice_in_dim(x, kb * self.bk, self.bk, axis=4)
    return x

  def limits(self, q_len, kv_len):
    """Rows past max(q_len) and keys past max(kv_len) are never visited."""
    q_max = self.T if q_len is None else jnp.clip(jnp.max(q_len), 0, self.T)
    kv_max = self.S if kv_len is None else jnp.clip(jnp.max(kv_len), 0, self.S)
    return q_max, kv_max


def _block_range(lo, hi, size, empty):
  lo = jnp.asarray(lo, jnp.int32) // size
  hi = (jnp.asarray(hi, jnp.int32) + size - 1) // size
  return lo, jnp.where(empty, lo, jnp.maximum(hi, lo))


def _forward(plan, q, k, v, bias, mask, q_len, kv_len, extras):
  """(out, lse, the number of blocks folded: a count for tests, free to compute)."""
  q_max, kv_max = plan.limits(q_len, kv_len)

  def query_block(folded, xs):
    qb, q_blk = xs

    def update(masked, qb, kb, carry):
      softmax_carry, folded = carry
      s, ok = plan.block_logits(q_blk, k[kb], bias, mask, qb, kb, q_len, kv_len, masked,
                                extras)
      return (online_softmax.fold(softmax_carry, s if ok is None else
                                  jnp.where(ok, s, -jnp.inf), v[kb]), folded + 1)

    step = plan.per_block(update, mask, q_len, kv_len, extras)
    bounds = block_skipping.narrow(plan.key_blocks(qb, q_max, kv_max), extras.visits,
                                   lambda visits: visits[qb])
    carry, folded = jax.lax.fori_loop(*bounds,
                                      lambda kb, carry: step(qb, kb, carry),
                                      (online_softmax.init(q_blk), folded))
    out, lse = online_softmax.finish(carry, extras.sinks)
    return folded, (out.astype(q.dtype), lse)

  folded, (out, lse) = jax.lax.scan(query_block, jnp.int32(0), (jnp.arange(plan.nq), q))
  return out, lse, folded


def _backward(plan, residuals, cotangents):
  q, k, v, bias, mask, q_len, kv_len, extras, out, lse = residuals
  dout, dlse = cotangents
  q_max, kv_max = plan.limits(q_len, kv_len)
  # d lse / d logits = p: the residual's cotangent joins delta (FlashAttention-2's D).
  delta = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1) - dlse
  consts = extras.score_consts

  def key_block(carry, xs):
    kb, k_blk, v_blk = xs

    def update(masked, qb, kb, carry):
      dk, dv, dq, dbias, dconsts = carry
      raw = plan.scores(q[qb], k_blk, bias, qb, kb)
      s, chain = jax.vjp(lambda raw, consts: plan.modify(raw, qb, kb, consts), raw, consts)
      ok = plan.allowed(s.shape, mask, qb, kb, q_len, kv_len, extras) if masked else None
      p = jnp.exp(s - lse[qb][..., None])
      if ok is not None:
        p = jnp.where(ok, p, 0.0)
      ds, dv_blk = online_softmax.logit_gradients(p, dout[qb], delta[qb], v_blk)
      ds, dconsts_blk = chain(ds)  # through the cap and score_mod, to q·k and the captures
      dq_blk, dk_blk = online_softmax.qk_gradients(ds, q[qb], k_blk)
      if dbias is not None:
        dbias = _add_bias_block(plan, dbias, ds, qb, kb)
      dconsts = jax.tree.map(jnp.add, dconsts, dconsts_blk)
      return dk + dk_blk, dv + dv_blk, dq.at[qb].add(dq_blk), dbias, dconsts

    dq, dbias, dconsts = carry
    zeros = jnp.zeros(k_blk.shape, jnp.float32)
    step = plan.per_block(update, mask, q_len, kv_len, extras)
    dk, dv, dq, dbias, dconsts = jax.lax.fori_loop(
        *block_skipping.narrow(plan.query_blocks(kb, q_max, kv_max), extras.visits,
                 lambda visits: visits[:, kb]),
        lambda qb, carry: step(qb, kb, carry), (zeros, zeros, dq, dbias, dconsts))
    return (dq, dbias, dconsts), (dk * plan.scale, dv)

  init = (jnp.zeros(q.shape, jnp.float32),
          None if bias is None else jnp.zeros(bias.shape, jnp.float32),
          jax.tree.map(jnp.zeros_like, consts))
  (dq, dbias, dconsts), (dk, dv) = jax.lax.scan(key_block, init, (jnp.arange(plan.nk), k, v))
  dbias = None if bias is None else dbias.astype(bias.dtype)
  dsinks = None
  if extras.sinks is not None:  # d lse / d sink = its weight exp(sink - lse); lse = inf: no key
    dsinks = -jnp.sum(jnp.exp(extras.sinks[None] - lse) * delta, axis=(0, 1, 4))[None, ..., None]
  dextras = jax.tree.map(lambda _: None, extras)._replace(sinks=dsinks, score_consts=dconsts)
  return ((dq * plan.scale).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), dbias,
          None, None, None, dextras)


def _add_bias_block(plan, dbias, ds, qb, kb):
  """Adds one block's logit gradient into a (possibly broadcast) bias gradient."""
  broadcast = tuple(a for a in range(5) if dbias.shape[a] == 1 and ds.shape[a] != 1)
  ds = ds.sum(axis=broadcast, keepdims=True)
  start = (0, 0, 0, qb * plan.bq if dbias.shape[3] > 1 else 0,
           kb * plan.bk if dbias.shape[4] > 1 else 0)
  return jax.lax.dynamic_update_slice(dbias, jax.lax.dynamic_slice(dbias, start, ds.shape) + ds,
                                      start)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(plan, q, k, v, bias, mask, q_len, kv_len, extras):
  """(out, lse); lse is +inf on rows with no key."""
  return _forward(plan, q, k, v, bias, mask, q_len, kv_len, extras)[:2]


def _attention_fwd(plan, q, k, v, bias, mask, q_len, kv_len, extras):
  out, lse, _ = _forward(plan, q, k, v, bias, mask, q_len, kv_len, extras)
  return (out, lse), (q, k, v, bias, mask, q_len, kv_len, extras, out, lse)


_attention.defvjp(_attention_fwd, _backward)
