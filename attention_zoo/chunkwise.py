"""The chunkwise (training) form of the recurrences in recurrence.py.

The sequence is cut into chunks of C tokens and a lax.scan runs over the T / C chunks,
carrying only the state S [H, H] per head. Inside a chunk the recurrence is a masked
quadratic form. With b the cumulative log gate inside the chunk (b_i <= 0, decreasing),
both families take the same step (`_step`):

  out = (q * exp(b)) S + A (U - W S),    S' = exp(b_C) S + (k * exp(b_C - b))^T (U - W S)

With segment ids (x.resets) each run of one id starts from a zero state: A and the delta
rule's K K^T keep only pairs of one run, the state before the chunk reaches only the rows of
the run the chunk began in, and only the last run's keys reach the next state (`_runs`).

gated linear (retention, gla): U = V, W = 0, A_ij = sum_h q_ih k_jh exp(b_ih - b_jh), j <= i;
delta rule (Yang et al. 2024, "Parallelizing Linear Transformers with the Delta Rule over
Sequence Length"; gated: Yang, Kautz, Hatamizadeh 2024): the WY/UT form U = T diag(beta) V,
W = T diag(beta exp(b)) K with T = (I + strict_lower(diag(beta) (K K^T * exp(b_i - b_j))))^-1,
and A_ij = (q_i . k_j) exp(b_i - b_j), j <= i.

No exp overflows for any gates <= 0: every exponent is a difference of cumulative gates
taken in log space, <= 0 (masked before the exp).

Two forms compute the same function (the option `chunk_form` of each recurrence):
- "scan": a lax.scan over chunks carries the state. The body is jax.checkpoint-ed: the
  backward keeps one [H, H] state per chunk and recomputes the rest, so memory is linear in
  T. On the CPU it beats computing every chunk at once (forward+backward at T=8192 measured
  1.5-1.8x faster, in under half the memory): a step's working set stays in cache.
- "parallel": every chunk at once. A chunk's state update is affine, S' = M S + I (M
  diagonal for the gated-linear family, [H, H] for the delta rule), so the state before
  every chunk comes from one associative scan over the chunks' (M, I) (log2 of the chunk
  count steps, not one per chunk), then every chunk's output in one batch: a few large
  kernels instead of T / C small sequential ones, which is what a GPU or TPU wants. It keeps
  every chunk's state (T / C of them).
`chunk_form=None` picks scan on a CPU and parallel elsewhere (`choose_form`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from attention_zoo.recurrence import Prepared

# Chunks per scan step. Forward+backward at T=8192 (B=1, N=8, H=64) on the 2-core CPU, min
# of 5 interleaved runs: 4 is fastest or within noise of it for every variant (retention:
# 1: 167 ms, 2: 161, 4: 159, 8: 162; gla: 2: 296, 4: 277, 8: 339).
GROUP = 4
FORMS = ("scan", "parallel")


def check_form(variant: str, chunk_form) -> None:
  if chunk_form is not None and chunk_form not in FORMS:
    raise ValueError(f"{variant}: chunk_form must be None or one of {FORMS}, got "
                     f"{chunk_form!r}")


def choose_form(chunk_form) -> tuple[str, str]:
  """(the form that runs, why): a named one as asked; None: scan on a CPU, else parallel."""
  if chunk_form is not None:
    return chunk_form, "asked for by name"
  platform = jax.default_backend()
  if platform == "cpu":
    return "scan", "platform 'cpu': a scan over chunks keeps each step in cache"
  return "parallel", f"platform {platform!r}: every chunk at once, a few large kernels"


def _run_chunks(chunk_form, intra, x: Prepared, size, inputs):
  form, _ = choose_form(chunk_form)
  return (_scan_chunks if form == "scan" else _parallel_chunks)(intra, x, size, inputs)


def _chunks(x, size, group):
  """[B, N, T, ...] -> [T / (size group), B, N, group, size, ...], zero-padded at the end.
  Zero keys, gates and beta make the padding identity steps: the final state is the one
  after token T."""
  B, N, T = x.shape[:3]
  pad = -T % (size * group)
  x = jnp.pad(x, [(0, 0), (0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 3))
  return jnp.moveaxis(x.reshape(B, N, -1, group, size, *x.shape[3:]), 2, 0)


def _scan_chunks(intra, x: Prepared, size, inputs, group=None):
  """out [B, N, T, H] and the final state, with intra(*chunk_inputs) -> the state-independent
  inputs of `_step` for a [B, N, group, C, ...] block of `group` chunks.

  Each scan step takes `group` chunks: their intra-chunk work batched, then the state carried
  through them one by one (fewer, larger ops than one chunk per step: measured faster)."""
  T = x.q.shape[2]
  group = min(GROUP if group is None else group, -(-T // size))
  xs = tuple(None if a is None else _chunks(a, size, group) for a in inputs)

  def body(s, xs):
    per_chunk = intra(*xs)
    outs = []
    for i in range(group):
      out, s = _step(s, *(None if a is None else a[:, :, i] for a in per_chunk))
      outs.append(out)
    return s, jnp.stack(outs, axis=2)

  final, out = jax.lax.scan(jax.checkpoint(body), x.initial, xs)
  B, N = out.shape[1:3]
  return jnp.moveaxis(out, 0, 2).reshape(B, N, -1, out.shape[-1])[:, :, :T], final


def _step(s, qd, kd, decay, scores, u, w=None, carries=None, tail=None):
  """One chunk: qd = q exp(b), kd = k exp(b_C - b), u, w [B, N, C, H]; decay = exp(b_C)
  [B, N, 1 or H]; scores A [B, N, C, C]; s [B, N, H, H]; with segments carries and tail
  bool [B, 1, C] (`_runs`); any further axes before C (the parallel form's chunk axis) are
  batch axes. Returns (out, next state)."""
  past = jnp.einsum("...ck,...kv->...cv", qd, s)
  ws = None if w is None else jnp.einsum("...ck,...kv->...cv", w, s)
  kept = decay[..., None] * s
  if carries is not None:  # a run that starts inside the chunk starts from zero; selects,
    # not products with 0, so that a NaN of an earlier run does not reach it (0 * NaN)
    past, ws = (None if x is None else jnp.where(carries[..., None], x, 0.0) for x in (past, ws))
    kept = jnp.where(carries[..., -1:, None], kept, 0.0)
  new = u if ws is None else u - ws
  out = past + jnp.einsum("...cd,...dv->...cv", scores, new)
  if tail is not None:  # only the last run's keys reach the next state
    kd, new = (jnp.where(tail[..., None], x, 0.0) for x in (kd, new))
  return out, kept + jnp.einsum("...ck,...cv->...kv", kd, new)


def _parallel_chunks(intra, x: Prepared, size, inputs):
  """`_scan_chunks`'s result with every chunk at once: the states before the chunks by an
  associative scan of their affine updates (`_affine`), then `_step`'s output for all."""
  T = x.q.shape[2]
  count = -(-T // size)
  chunks = tuple(None if a is None else _chunks(a, size, count)[0] for a in inputs)
  per_chunk = intra(*chunks)                                   # [B, N, count, C, ...]
  m, increment = _affine(*per_chunk)
  first = _apply(m[:, :, 0], x.initial) + increment[:, :, 0]   # the initial state enters
  increment = jnp.concatenate([first[:, :, None], increment[:, :, 1:]], axis=2)
  _, after = jax.lax.associative_scan(_compose, (m, increment), axis=2)
  before = jnp.concatenate([x.initial[:, :, None], after[:, :, :-1]], axis=2)
  out, _ = _step(before, *per_chunk)
  B, N = out.shape[:2]
  return out.reshape(B, N, -1, out.shape[-1])[:, :, :T], after[:, :, -1]


def _affine(qd, kd, decay, scores, u, w=None, carries=None, tail=None):
  """A chunk's state update as S' = M S + I, `_step`'s next state written out: M [..., H, 1]
  or [..., 1, 1] (a diagonal: the gated-linear family) or [..., H, H] (the delta rule)."""
  del qd, scores
  keep = decay[..., None]
  if carries is not None:  # a run starts inside the chunk: the state before it is dropped
    keep = jnp.where(carries[..., -1:, None], keep, 0.0)
    w = None if w is None else jnp.where(carries[..., None], w, 0.0)
  if tail is not None:  # only the last run's keys reach the next state
    kd, u, w = (None if a is None else jnp.where(tail[..., None], a, 0.0) for a in (kd, u, w))
  increment = jnp.einsum("...ck,...cv->...kv", kd, u)
  if w is None:
    return keep, increment
  return (keep * jnp.eye(kd.shape[-1], dtype=kd.dtype)
          - jnp.einsum("...ck,...cj->...kj", kd, w)), increment


def _apply(m, s):
  """M S for `_affine`'s M: a product with a diagonal (last axis 1) or a matrix product."""
  return m * s if m.shape[-1] == 1 else jnp.einsum("...kj,...jv->...kv", m, s)


def _compose(earlier, later):
  """The affine update `earlier` then `later`: S -> M2 (M1 S + I1) + I2."""
  (m1, i1), (m2, i2) = earlier, later
  return _apply(m2, m1), _apply(m2, i1) + i2


def _runs(resets):
  """For a chunk's resets bool [..., C] (None: no segments): same [..., C, C] (i and j in one
  run), carries [..., C] (i in the run the chunk began in: the state before the chunk
  reaches it) and tail [..., C] (j in the chunk's last run: it reaches the next state)."""
  if resets is None:
    return None, None, None
  run = jnp.cumsum(resets.astype(jnp.int32), axis=-1)
  return run[..., :, None] == run[..., None, :], run == 0, run == run[..., -1:]


def _same_run(x, same):
  return x if same is None else jnp.where(same, x, 0.0)


def _cumsum(g):
  """Inclusive cumulative sum over axis -2 of [..., C, Hg], as a matmul (XLA's CPU cumsum is a
  reduce-window, O(C) adds per element)."""
  C = g.shape[-2]
  return jnp.einsum("dc,...ch->...dh", jnp.tril(jnp.ones((C, C), g.dtype)), g)


def _decay_matrix(b):
  """exp(b_i - b_j) for j <= i, else 0: [..., C] -> [..., C, C], masked before the exp."""
  C = b.shape[-1]
  causal = jnp.tril(jnp.ones((C, C), bool))
  return jnp.exp(jnp.where(causal, b[..., :, None] - b[..., None, :], -jnp.inf))


def _causal_product(x, decay):
  """x * decay with the pairs j > i set to 0 by a select, not by multiplying with 0, so a NaN
  key or query at j does not reach the rows before it (0 * NaN is NaN)."""
  C = x.shape[-1]
  return jnp.where(jnp.tril(jnp.ones((C, C), bool)), x * decay, 0.0)


def _explicit_scores(q, k, b):
  """sum_h q_ih k_jh exp(b_ih - b_jh) for j <= i, else 0: [..., c, H] -> [..., c, c], through
  a [c, c, H] tensor of decays (exact for any gates; c small)."""
  c = q.shape[-2]
  causal = jnp.tril(jnp.ones((c, c), bool))[..., None]
  decay = jnp.exp(jnp.where(causal, b[..., :, None, :] - b[..., None, :, :], -jnp.inf))
  return jnp.where(causal[..., 0], jnp.sum(q[..., :, None, :] * k[..., None, :, :] * decay,
                                           axis=-1), 0.0)


def gated_scores(q, k, b, sub):
  """A_ij = sum_h q_ih k_jh exp(b_ih - b_jh) for j <= i, else 0: [..., C, H] -> [..., C, C],
  for per-key-dim cumulative gates b (decreasing); C = sub * 2^levels.

  The GLA paper's secondary chunking, applied by halving: the off-diagonal half (queries in
  the second half, keys in the first) factors through r, the cumulative gate at the first
  half's last token, as (q_i exp(b_i - r)) . (k_j exp(r - b_j)) with both exponents <= 0, so
  a matmul computes it; the two diagonal halves recurse, batched together, down to
  sub-chunks of `sub` tokens, which use exp(b_i - b_j) itself, masked. Elementwise work per
  token is (levels + sub) * H, against (C / sub + sub) * H for one level of sub-chunks.
  """
  *lead, C, H = q.shape
  q, k, b = (x.reshape(-1, C, H) for x in (q, k, b))  # rank 3: XLA's CPU fusions cap rank
  return _halving_scores(q, k, b, sub).reshape(*lead, C, C)


def _halving_scores(q, k, b, sub):
  n = q.shape[-2]
  if n <= sub:
    return _explicit_scores(q, k, b)
  h, M = n // 2, q.shape[0]
  r = b[:, h - 1:h, :]
  q_r, k_r = q[:, h:] * jnp.exp(b[:, h:] - r), k[:, :h] * jnp.exp(r - b[:, :h])
  off = jnp.einsum("mih,mjh->mij", q_r, k_r)
  halves = lambda x: jnp.concatenate([x[:, :h], x[:, h:]])          # [2M, h, H]
  diag = _halving_scores(halves(q), halves(k), halves(b), sub)
  return jnp.concatenate([jnp.concatenate([diag[:M], jnp.zeros_like(off)], axis=-1),
                          jnp.concatenate([off, diag[M:]], axis=-1)], axis=-2)


def _sizes(length, chunk, sub=None):
  """The chunk used for `length` tokens: sub * 2^k, the least that covers them, at most
  `chunk`; without sub, min(chunk, length)."""
  if sub is None:
    return min(chunk, length), None
  sub = min(sub, length)
  size = sub
  while size < min(chunk, length):
    size *= 2
  return size, sub


def gated_linear(x: Prepared, chunk: int, sub_chunk: int, chunk_form=None):
  """retention and gla: (out [B, N, T, H], final state [B, N, H, H])."""
  chunk, sub_chunk = _sizes(x.q.shape[2], chunk, sub_chunk)

  def intra(q, k, v, g, resets):
    same, carries, tail = _runs(resets)
    b = _cumsum(g)                                             # [B, N, G, C, 1 or H]
    last = b[..., -1:, :]
    if g.shape[-1] == 1:  # one gate per head: a [C, C] decay matrix
      scores = _causal_product(jnp.einsum("...ch,...dh->...cd", q, k), _decay_matrix(b[..., 0]))
    else:
      scores = gated_scores(q, k, b, sub_chunk)
    return (q * jnp.exp(b), k * jnp.exp(last - b), jnp.exp(last[..., 0, :]),
            _same_run(scores, same), v, None, carries, tail)

  return _run_chunks(chunk_form, intra, x, chunk, (x.q, x.k, x.v, x.log_gate, x.resets))


def _forward_substitution(a):
  """(I + a)^-1 for strictly lower-triangular a [..., s, s], row by row (s small)."""
  s = a.shape[-1]
  x = jnp.broadcast_to(jnp.eye(s, dtype=a.dtype), a.shape)
  for i in range(1, s):  # row i = e_i - sum_{j < i} a_ij row_j; rows < i are final
    x = x.at[..., i, :].add(-jnp.einsum("...j,...jk->...k", a[..., i, :], x))
  return x


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def unit_lower_inverse(a, base=4):
  """(I + a)^-1 for strictly lower-triangular a [..., C, C], by matmuls only.

  Halves recursively, [[X11, 0], [X21, X22]] with X21 = -X22 a21 X11, both halves batched
  together; blocks of `base` rows by forward substitution. a is zero-padded to base * 2^k
  (identity rows). XLA's CPU triangular solve calls LAPACK once per matrix: far slower here.
  `base` 1-16 run equally fast (T=8192); 4 compiles fastest (2.2 s against 3.6 s for 16).
  """
  *lead, C, _ = a.shape
  size = base
  while size < C:
    size *= 2
  a = jnp.pad(a.reshape(-1, C, C), [(0, 0), (0, size - C), (0, size - C)])

  def invert(a):
    n, M = a.shape[-1], a.shape[0]
    if n <= base:
      return _forward_substitution(a) if n > 1 else jnp.ones_like(a)
    h = n // 2
    x = invert(jnp.concatenate([a[:, :h, :h], a[:, h:, h:]]))
    x11, x22 = x[:M], x[M:]
    x21 = -jnp.einsum("mij,mjk,mkl->mil", x22, a[:, h:, :h], x11)
    return jnp.concatenate([jnp.concatenate([x11, jnp.zeros_like(x11)], axis=-1),
                            jnp.concatenate([x21, x22], axis=-1)], axis=-2)

  return invert(a)[:, :C, :C].reshape(*lead, C, C)


def _inverse_forward(a, base):
  x = unit_lower_inverse(a, base)
  return x, x


def _inverse_backward(base, x, g):
  """X = (I + a)^-1 gives dX = -X da X: the cotangent of a is -X^T g X^T on its strictly
  lower part (two matmuls, not the transpose of every step of the recursion)."""
  del base
  return (jnp.tril(-jnp.einsum("...ji,...jk,...lk->...il", x, g, x), -1),)


unit_lower_inverse.defvjp(_inverse_forward, _inverse_backward)


def delta_rule(x: Prepared, chunk: int, chunk_form=None):
  """deltanet (x.log_gate None) and gated_deltanet (one gate per head): (out, final state)."""
  chunk, _ = _sizes(x.q.shape[2], chunk)
  causal = jnp.tril(jnp.ones((chunk, chunk), bool))
  strict = causal & ~jnp.eye(chunk, dtype=bool)

  def intra(q, k, v, beta, g, resets):
    same, carries, tail = _runs(resets)
    if g is None:
      b, decay = None, causal.astype(jnp.float32)
    else:
      b = _cumsum(g)[..., 0]                                   # [B, N, G, C]
      decay = _decay_matrix(b)
    kk = _same_run(jnp.einsum("...ch,...dh->...cd", k, k) * decay, same)
    inverse = unit_lower_inverse(jnp.where(strict, beta[..., :, None] * kk, 0.0))
    rhs = jnp.concatenate([v, k if b is None else k * jnp.exp(b)[..., None]], axis=-1)
    u, w = jnp.split(jnp.einsum("...cd,...dh->...ch", inverse, rhs * beta[..., None]), 2, -1)
    scores = _same_run(_causal_product(jnp.einsum("...ch,...dh->...cd", q, k), decay), same)
    if b is None:
      return q, k, jnp.ones(q.shape[:3] + (1,), q.dtype), scores, u, w, carries, tail
    kd = k * jnp.exp(b[..., -1:] - b)[..., None]
    return q * jnp.exp(b)[..., None], kd, jnp.exp(b[..., -1:]), scores, u, w, carries, tail

  return _run_chunks(chunk_form, intra, x, chunk,
                     (x.q, x.k, x.v, x.beta, x.log_gate, x.resets))
