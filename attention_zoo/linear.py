"""Linear (kernelized) attention, Katharopoulos et al. 2020 ("Transformers are RNNs").

  out_i = phi(q_i) · sum_j phi(k_j) v_j^T  /  phi(q_i) · sum_j phi(k_j),  over allowed keys j.

Non-causal: O((T + S)·F·H). Causal: chunkwise, quadratic inside a chunk of C rows and a
[F, H] state per chunk across chunks (a scan over chunks), so O(T·(C + F)·H) time and
O(T·H + (T/C)·F·H) memory; no [T, F, H] prefix tensor exists.

Numerics. Each map is computed as a log-feature without cancellation (elu+1: log1p(x) for
x > 0, else x; relu: log x; favor: w·x - |x|²/2), and phi = exp(log-feature - shift) with
shifts that cancel in the ratio and carry no gradient: per key/value head and feature, the
largest log-feature of the keys (non-causal: all allowed keys; causal: those before each
chunk, then those of the chunk), added back on the query side, and per query row its
largest shifted log-feature. So no feature exceeds 1 and, non-causal, every row that may
attend a key has a normaliser >= 1: its output is a convex combination of the values it
attends for any finite input. Causal, a chunk's rows sum the state before the chunk (at its
shift) and the chunk's own keys; keys that share one shift can still underflow a row when a
later key of the row's own chunk exceeds all keys it attends by ~e^80 in every feature:
never for elu with key entries in [-75, 147], nor for relu unless positive key entries of a
chunk differ by a factor e^80. favor's log-features grow with the square of the input (the
underflow began at about 5 standard deviations), so there a chunk is halved down to single
rows (`_within`): every shared shift then belongs to keys all of its rows attend, and every
causal row is a convex combination too, at any chunk size.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from attention_zoo import validation

NAME = "linear"
FEATURE_MAPS = ("elu", "relu", "favor")
MAX_FEATURES = 1 << 16  # favor's [F, H] projection and [F, H] state per head


@validation.call_forms(NAME)
def linear_attention(query, key, value, bias=None, mask=None, *, scale=None, is_causal=False,
                     query_seq_lengths=None, key_value_seq_lengths=None,
                     local_window_size=None, segment_ids=None, feature_map="elu",
                     num_features=256, seed=0,
                     chunk_size=64):  # causal T=8192: 64 rows fastest (32: +10%, 256: +50%)
  """Kernelized attention; `scale` (None = 1, the paper's form) multiplies q before phi.

  Honours causal and both padding lengths; a dense mask, bias or window raises
  NotImplementedError. A row with a zero normaliser (no allowed key, or relu features
  that share no positive coordinate with its keys) returns exactly zeros, whatever the
  values hold. Every other row is a convex combination of the values it may attend (see
  the module docstring for the one causal exception). A NaN in query row i makes row i
  NaN; a NaN in key j makes NaN exactly the rows that may attend j; a NaN value reaches
  the rows that attend it and may reach other rows of its head (0·NaN in a product).
  `segment_ids` (causal, one int array [B, T] for queries and keys): the state restarts
  where the id changes, so each packed sequence is computed as if it were alone.
  """
  dims = validation.check_inputs(NAME, query, key, value, bias, mask,
                                 query_seq_lengths=query_seq_lengths,
                                 key_value_seq_lengths=key_value_seq_lengths)
  validation.unsupported(NAME, bias=bias, mask=mask, local_window_size=local_window_size)
  check_options(feature_map, num_features, seed, chunk_size)
  scale = _check_scale(feature_map, scale)
  runs = None
  ids = validation.restarting_segment_ids(NAME, segment_ids, is_causal)
  if ids is not None:  # runs of one id, numbered: query i and key j share one iff equal
    runs = jnp.cumsum(validation.segment_starts(ids), axis=1)
  lq, lk = log_features(query, key, scale=scale, feature_map=feature_map,
                        num_features=num_features, seed=seed)
  B, T, S, K, G = dims.B, dims.T, dims.S, dims.K, dims.G
  lq = lq.reshape(B, T, K, G, -1)
  v = value.astype(jnp.float32)
  if key_value_seq_lengths is not None:  # padded keys get no feature at all (NaN included)
    lk = jnp.where(jnp.arange(S)[None, :, None, None] <
                   key_value_seq_lengths[:, None, None, None], lk, -jnp.inf)
  if is_causal:
    # favor's log-features grow with |x|²: only single-row blocks keep every row exact.
    num, den = _causal(lq, lk, v, chunk_size, base=1 if feature_map == "favor" else chunk_size,
                       runs=runs)
  else:
    num, den = _bidirectional(lq, lk, v)
  out = normalize(num, den)
  # Rows that attend no key are zeros by position, not by their normaliser (which a NaN
  # query would make NaN): padded rows, and every row of a sequence with no key.
  rows = jnp.ones((B, T), bool)
  if query_seq_lengths is not None:
    rows &= jnp.arange(T)[None, :] < query_seq_lengths[:, None]
  if key_value_seq_lengths is not None:
    rows &= key_value_seq_lengths[:, None] > 0
  out = jnp.where(rows[:, :, None, None, None], out, 0.0)
  return out.reshape(B, T, dims.N, -1).astype(query.dtype)


def check_options(feature_map="elu", num_features=256, seed=0, chunk_size=64):
  if feature_map not in FEATURE_MAPS:
    raise ValueError(f"{NAME}: unknown feature_map {feature_map!r}; choose from {FEATURE_MAPS}")
  validation.check_positive(NAME, chunk_size=chunk_size)  # above T it is clipped to T
  validation.check_at_most(NAME, MAX_FEATURES, num_features=num_features)
  if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
    raise ValueError(f"{NAME}: seed must be a non-negative int, got {seed!r}")


def _check_scale(feature_map, scale):
  scale = validation.check_scale(NAME, scale)
  if feature_map == "favor" and scale is not None and scale < 0:
    raise ValueError(f"{NAME}: favor estimates exp(scale·q·k) with sqrt(scale) on q and k, "
                     f"so scale must be >= 0, got {scale}")
  return scale


def normalize(num, den):
  """num / den with den broadcast over the head dim: exactly zero where den == 0, NaN
  where den is NaN (a NaN input that reaches the row)."""
  den = den[..., None]
  empty = den == 0
  return jnp.where(empty, 0.0, num / jnp.where(empty, 1.0, den))


def _finite_max(x, axis):
  """Max over the finite entries along `axis` (-inf if none), kept as a unit axis, without
  gradient: a shift that cancels in the ratio. NaN and inf inputs never set it, so they
  reach only the rows that attend them."""
  return jax.lax.stop_gradient(
      jnp.max(jnp.where(jnp.isfinite(x), x, -jnp.inf), axis=axis, keepdims=True))


def _finite(shift):
  """A shift where it is finite, else 0 (nothing finite to shift: exp gives 0 or NaN)."""
  return jnp.where(jnp.isfinite(shift), shift, 0.0)


def _row_features(lq):
  """exp(lq - its largest finite entry per row): at most 1, the largest exactly 1."""
  return jnp.exp(lq - _finite(_finite_max(lq, -1)))


def _bidirectional(lq, lk, v):
  """Numerator [B,T,K,G,H] and normaliser [B,T,K,G] when every row attends every key."""
  shift = _finite(_finite_max(lk, 1))                         # [B, 1, K, F]
  phi_k = jnp.exp(lk - shift)                                 # <= 1, 1 for the largest key
  phi_q = _row_features(lq + shift[:, :, :, None, :])         # the shift moved to q
  num = jnp.einsum("btkgf,bkfh->btkgh", phi_q, jnp.einsum("bskf,bskh->bkfh", phi_k, v))
  den = jnp.einsum("btkgf,bkf->btkg", phi_q, phi_k.sum(axis=1))
  return num, den


def log_features(query, key, *, scale, feature_map, num_features=256, seed=0):
  """log phi(scale·q) [B, T, N, F] and log phi(k) [B, S, K, F] in float32 (-inf for a zero
  feature). favor: `sqrt(scale)` multiplies both q and k (see `features`)."""
  q, k = query.astype(jnp.float32), key.astype(jnp.float32)
  if feature_map == "favor":
    root = 1.0 if scale is None else math.sqrt(scale)
    w = jnp.asarray(orthogonal_features(num_features, q.shape[-1], seed))
    return _log_favor(q * root, w), _log_favor(k * root, w)
  q = q if scale is None else q * scale
  log_phi = _log_elu1 if feature_map == "elu" else _log_relu
  return log_phi(q), log_phi(k)


def _log_elu1(x):
  """log(elu(x) + 1) = log1p(x) for x > 0, else x: no cancellation at any x (the inner
  where keeps log1p's unused branch, and its gradient, finite)."""
  return jnp.where(x > 0, jnp.log1p(jnp.where(x > 0, x, 0.0)), x)


def _log_relu(x):
  """log(relu(x)): -inf where x <= 0 (with zero gradient there); NaN stays NaN."""
  return jnp.where(x > 0, jnp.log(jnp.where(x > 0, x, 1.0)), jnp.where(x <= 0, -jnp.inf, x))


def _log_favor(x, w):
  """log of Performer's exp(w·x - |x|²/2) / sqrt(m)."""
  return (jnp.einsum("...h,fh->...f", x, w) - 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)
          - 0.5 * math.log(w.shape[0]))


def features(query, key, *, scale, feature_map, num_features=256, seed=0):
  """phi(scale·q) [B, T, N, F] and phi(k) [B, S, K, F], in float32, unshifted (so they may
  underflow on large inputs; the attention itself shifts them, see the module docstring).

  elu is computed as x + 1 for x > 0, else exp(x) (never elu(x) + 1, which cancels).
  favor (Performer's positive orthogonal random features) estimates exp(scale·q·k);
  there `sqrt(scale)` multiplies both q and k, which estimates the same kernel with far
  lower variance than scaling q alone; each query row is divided by its largest feature.
  """
  if feature_map == "favor":
    lq, lk = log_features(query, key, scale=scale, feature_map=feature_map,
                          num_features=num_features, seed=seed)
    return _row_features(lq), jnp.exp(lk)
  q, k = query.astype(jnp.float32), key.astype(jnp.float32)
  q = q if scale is None else q * scale
  if feature_map == "elu":
    phi = lambda x: jnp.where(x > 0, x + 1.0, jnp.exp(jnp.minimum(x, 0.0)))
  else:
    phi = jax.nn.relu
  return phi(q), phi(k)


def orthogonal_features(m: int, d: int, seed: int) -> np.ndarray:
  """[m, d] Gaussian rows, orthogonal within blocks of d, norms chi-distributed."""
  rng = np.random.default_rng(seed)
  blocks = []
  for _ in range(-(-m // d)):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    # Householder QR fixes the signs of diag(r); undoing that makes q uniformly
    # (Haar) distributed, without which the kernel estimate is biased (~10% here).
    blocks.append((q * np.sign(np.diag(r))).T)
  norms = np.linalg.norm(rng.standard_normal((m, d)), axis=1)
  return (np.concatenate(blocks)[:m] * norms[:, None]).astype(np.float32)


def _causal(lq, lk, v, chunk, base, runs=None):
  """Causal numerator [B,T,K,G,H] and normaliser [B,T,K,G], chunk by chunk.

  Query i attends keys j <= i (top-left aligned, as softmax); T != S is handled by
  padding both to a whole number of chunks of the longer length (a chunk longer than
  the sequence shrinks to the power of two that covers it; one that is halved grows to a
  power of two). Each row sums the state before its chunk and the keys of its own chunk
  (`_within`, halving down to `base` rows), every part at its own scale, combined as
  `_merge` does. `runs` int [B, T] (T == S): query i and key j are of one packed sequence
  iff their runs are equal; then only the last run's keys of a chunk enter the state, which
  restarts in a chunk where a run starts and reaches only the rows of the run it holds (as
  the gated recurrences do, chunkwise.py).
  """
  B, T, K, G, F = lq.shape
  S = lk.shape[1]
  if base < chunk:  # halving needs even sizes down to `base`
    chunk = 1 << (chunk - 1).bit_length()
  chunk = min(chunk, 1 << (max(T, S) - 1).bit_length())
  L = -(-max(T, S) // chunk) * chunk
  n = L // chunk

  def blocks(x, length, fill):
    x = jnp.pad(x, [(0, 0), (0, L - length)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
    return x.reshape(B, n, chunk, *x.shape[2:])

  lq, lk, vv = blocks(lq, T, 0.0), blocks(lk, S, -jnp.inf), blocks(v, S, 0.0)
  lk_state, fresh, carries = lk, jnp.zeros((B, n), bool), None
  if runs is not None:
    runs = jnp.pad(runs, [(0, 0), (0, L - T)], mode="edge").reshape(B, n, chunk)
    last = runs[:, :, -1]
    before = jnp.concatenate([runs[:, :1, 0], last[:, :-1]], axis=1)  # the state's run
    lk_state = jnp.where((runs == last[..., None])[..., None, None], lk, -jnp.inf)
    fresh, carries = last != before, runs == before[..., None]
  own = _finite_max(lk_state, 2)                              # [B, n, 1, K, F]
  pk_own = jnp.exp(lk_state - _finite(own))
  chunk_kv = jnp.einsum("bnckf,bnckh->bnkfh", pk_own, vv)
  chunk_k = pk_own.sum(axis=2)

  def carry_on(state, xs):
    """Adds one chunk to the state (both relative to their own shifts); emits the state
    before it: an exclusive prefix, never a difference of sums (which NaN would poison)."""
    shift, kv, k = state
    c_shift, c_kv, c_k, c_fresh = xs
    kept = ~c_fresh[:, None, None]  # a run starts in this chunk: the state restarts after it
    shift, kv, k = (jnp.where(kept, shift, -jnp.inf), jnp.where(kept[..., None], kv, 0.0),
                    jnp.where(kept, k, 0.0))  # selects: 0 * NaN would carry a NaN on
    new = jnp.maximum(shift, c_shift)
    a, b = jnp.exp(shift - _finite(new)), jnp.exp(c_shift - _finite(new))
    return (new, kv * a[..., None] + c_kv * b[..., None], k * a + c_k * b), state

  f32 = jnp.float32  # explicit: under x64 a default dtype would be float64
  init = (jnp.full((B, K, F), -jnp.inf, f32), jnp.zeros((B, K, F, v.shape[-1]), f32),
          jnp.zeros((B, K, F), f32))
  per_chunk = [jnp.moveaxis(x, 1, 0) for x in (own[:, :, 0], chunk_kv, chunk_k, fresh)]
  _, before = jax.lax.scan(carry_on, init, per_chunk)
  prev, state_kv, state_k = (jnp.moveaxis(x, 0, 1) for x in before)  # state relative to prev
  # The state's part at its own scale: -inf (no part) before any key.
  a = lq + prev[:, :, None, :, None, :]
  if carries is not None:  # rows of a run that starts in this chunk read no state
    a = jnp.where(carries[..., None, None, None], a, -jnp.inf)
  m = _finite_max(a, -1)
  pq = jnp.exp(a - _finite(m))
  past = (jnp.einsum("bnckgf,bnkfh->bnckgh", pq, state_kv),
          jnp.einsum("bnckgf,bnkf->bnckg", pq, state_k), m[..., 0])
  flat = lambda x: x.reshape(B * n, chunk, *x.shape[3:])
  own_part = _within(flat(lq), flat(lk), flat(vv), base, None if runs is None else flat(runs))
  own_part = tuple(x.reshape(B, n, *x.shape[1:]) for x in own_part)
  num, den, _ = _merge(past, own_part)
  return num.reshape(B, L, K, G, -1)[:, :T], den.reshape(B, L, K, G)[:, :T]


def _within(lq, lk, v, base, runs=None):
  """Each row's sum over the keys of its own block at or before it: (num, den, m), num
  and den scaled by exp(-m). [M, C, ...] blocks; halves while C > base and C is even.

  One block shares one key shift, which an unattended later key can set e^80 above every
  key a row attends (then the row underflows to zeros). Halving keeps every shared shift
  among keys that all of the block's rows attend: the lower-left quarter (the second
  half's queries, the first half's keys) is a dense block; the two diagonal halves
  recurse, batched. With base = 1 (and C a power of two) no row can underflow: each
  block's largest term is 1. With `runs` [M, C] the lower-left block keeps the first half's
  last run only (its keys, and the second half's rows of that run: every key it shifts by
  is still attended by every row that reads it); diagonal blocks keep the pairs of one run.
  """
  M, C = lq.shape[:2]
  if C <= base or C % 2:
    return _block(lq, lk, v, causal=True, runs=runs)
  h = C // 2
  lq_left, lk_left = lq[:, h:], lk[:, :h]
  if runs is not None:  # the lower left holds the first half's last run only (see above)
    tail = runs[:, h - 1:h]
    lq_left = jnp.where((runs[:, h:] == tail)[..., None, None, None], lq_left, -jnp.inf)
    lk_left = jnp.where((runs[:, :h] == tail)[..., None, None], lk_left, -jnp.inf)
  lower_left = _block(lq_left, lk_left, v[:, :h], causal=False)
  halves = lambda x: None if x is None else jnp.concatenate([x[:, :h], x[:, h:]])
  num, den, m = _within(halves(lq), halves(lk), halves(v), base, halves(runs))
  first = (num[:M], den[:M], m[:M])
  second = _merge((num[M:], den[M:], m[M:]), lower_left)
  return tuple(jnp.concatenate([x, y], axis=1) for x, y in zip(first, second))


def _block(lq, lk, v, causal, runs=None):
  """One dense block [M, C, K, G, F] x [M, D, K, F]: (num, den, m) with one key shift per
  feature and m the row's largest shifted log-feature (-inf: no finite key); causal blocks
  keep, with `runs` [M, C], only the pairs of one run."""
  shift = _finite_max(lk, 1)                                  # [M, 1, K, F]
  a = lq + shift[:, :, :, None, :]
  m = _finite_max(a, -1)
  pq, pk = jnp.exp(a - _finite(m)), jnp.exp(lk - _finite(shift))
  s = jnp.einsum("mckgf,mdkf->mkgcd", pq, pk)
  if causal:
    allowed = jnp.tril(jnp.ones(s.shape[-2:], bool))
    if runs is not None:
      allowed = allowed & (runs[:, :, None] == runs[:, None, :])[:, None, None]
    s = jnp.where(allowed, s, 0.0)
  return (jnp.einsum("mkgcd,mdkh->mckgh", s, v), jnp.einsum("mkgcd->mckg", s), m[..., 0])


def _merge(x, y):
  """Sums two (num, den, m) parts of the same rows at the larger of their scales (as
  flash attention's running maximum)."""
  m = jnp.maximum(x[2], y[2])
  a, b = jnp.exp(x[2] - _finite(m)), jnp.exp(y[2] - _finite(m))
  return x[0] * a[..., None] + y[0] * b[..., None], x[1] * a + y[1] * b, m


def init_state(batch: int, num_heads: int, kv_heads: int, head_dim: int, *, feature_map="elu",
               num_features=256, **_whole_sequence_options):
  """The recurrent form's state: sum_j phi(k_j) v_j^T [B, K, F, H] and sum_j phi(k_j) [B, K, F]
  (per key/value head: the query heads of a group share it), both relative to `shift`
  [B, K, F], the largest log-feature of each feature so far (as the causal form's shift)."""
  f = num_features if feature_map == "favor" else head_dim
  return dict(kv=jnp.zeros((batch, kv_heads, f, head_dim), jnp.float32),
              k=jnp.zeros((batch, kv_heads, f), jnp.float32),
              shift=jnp.full((batch, kv_heads, f), -jnp.inf, jnp.float32))


def recurrent_step(state, query, key, value, *, scale=None, feature_map="elu", num_features=256,
                   seed=0, **_whole_sequence_options):
  """One causal step of linear attention as an RNN (T = S = 1): returns (out, new state).

  Equal to the causal `linear_attention` at that position; the state grows by phi(k) v^T.
  Options that shape a whole-sequence call (chunk_size, is_causal) have no role in one step.
  """
  B, _, N, H = query.shape
  K = key.shape[2]
  lq, lk = log_features(query, key, scale=_check_scale(feature_map, scale),
                        feature_map=feature_map, num_features=num_features, seed=seed)
  lk = lk[:, 0]                                               # [B, K, F]
  shift = jnp.maximum(state["shift"],
                      jax.lax.stop_gradient(jnp.where(jnp.isfinite(lk), lk, -jnp.inf)))
  a, b = jnp.exp(state["shift"] - _finite(shift)), jnp.exp(lk - _finite(shift))
  state = dict(kv=state["kv"] * a[..., None] + jnp.einsum("bkf,bkh->bkfh", b,
                                                          value[:, 0].astype(jnp.float32)),
               k=state["k"] * a + b, shift=shift)
  phi_q = _row_features(lq[:, 0].reshape(B, K, N // K, -1) + _finite(shift)[:, :, None])
  out = normalize(jnp.einsum("bkgf,bkfh->bkgh", phi_q, state["kv"]),
                  jnp.einsum("bkgf,bkf->bkg", phi_q, state["k"]))
  return out.reshape(B, 1, N, H).astype(query.dtype), state
