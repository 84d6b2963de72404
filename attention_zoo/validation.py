"""Argument checks shared by every variant, run at trace time before any computation.

Dimension letters (JAX's): B batch, T query length, S key length, N query heads,
K key/value heads, G = N // K query heads per key/value head, H head dim.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers

import jax.numpy as jnp
import numpy as np

# float64 is refused, not computed: every kernel accumulates in float32, so float64
# inputs would silently lose their precision (and, under x64, promote constants).
FLOAT_DTYPES = (jnp.float16, jnp.bfloat16, jnp.float32)


@dataclasses.dataclass(frozen=True)
class Dims:
  B: int
  T: int
  S: int
  N: int
  K: int
  H: int

  @property
  def G(self) -> int:
    return self.N // self.K


def _shape(x) -> tuple[int, ...]:
  return tuple(np.shape(x))


def _is_int(x) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def normalize_window(variant: str, window) -> tuple[int, int] | None:
  """`local_window_size` as `(left, right)`: an int w means `(w, w)`."""
  if window is None:
    return None
  if _is_int(window):
    window = (int(window), int(window))
  if (not isinstance(window, (tuple, list)) or len(window) != 2
      or not all(_is_int(w) for w in window)):
    raise ValueError(f"{variant}: local_window_size must be an int or a (left, right) pair of "
                     f"ints, got {window!r}")
  left, right = int(window[0]), int(window[1])
  if left < 0 or right < 0:
    raise ValueError(f"{variant}: local_window_size must be non-negative, got {(left, right)}")
  return left, right


def clip_window(window, T: int, S: int) -> tuple[int, int] | None:
  """A window clipped to (T - 1, S - 1): wider allows no further key (the meaning is
  unchanged), and every position sum stays within int32 however large the request."""
  if window is None:
    return None
  return min(window[0], max(T - 1, 0)), min(window[1], max(S - 1, 0))


def clip_lengths(lengths, n: int):
  """Padding lengths as int32 in [0, n]: past the end means the whole axis (as in
  `jax.nn.dot_product_attention`), zero or negative means none."""
  if lengths is None:
    return None
  return jnp.clip(lengths, 0, n).astype(jnp.int32)


def check_positive(variant: str, **sizes) -> None:
  for name, value in sizes.items():
    if not _is_int(value) or value <= 0:
      raise ValueError(f"{variant}: {name} must be a positive int, got {value!r}")


def check_at_most(variant: str, limit: int, **sizes) -> None:
  """Sizes that set an allocation of their own (not clipped to a sequence length)."""
  check_positive(variant, **sizes)
  for name, value in sizes.items():
    if value > limit:
      raise ValueError(f"{variant}: {name} must be at most {limit}, got {value!r}")


def check_scale(variant: str, scale) -> float | None:
  """`scale` as a Python float (weakly typed: it never changes the logits' dtype)."""
  if scale is None:
    return None
  if not isinstance(scale, numbers.Real) or isinstance(scale, bool):
    raise ValueError(f"{variant}: scale must be a Python float or None, got {type(scale).__name__}"
                     " (it is a static argument of the compiled function)")
  if not math.isfinite(scale):
    raise ValueError(f"{variant}: scale must be finite, got {scale!r}")
  return float(scale)


def default_scale(variant: str, scale, head_dim: int) -> float:
  """`scale`, or 1/sqrt(H) when None, as a Python float."""
  scale = check_scale(variant, scale)
  return 1.0 / math.sqrt(head_dim) if scale is None else scale


def check_inputs(variant: str, query, key, value, bias=None, mask=None, *,
                 query_seq_lengths=None, key_value_seq_lengths=None) -> Dims:
  """Checks ranks, shapes and dtypes against `jax.nn.dot_product_attention`'s contract
  (on the batched form; see `call_forms` for the others)."""
  for name, x in (("query", query), ("key", key), ("value", value)):
    if np.ndim(x) != 4:
      raise ValueError(f"{variant}: {name} must have rank 4 [B, T|S, N|K, H] or 3 (no batch), "
                       f"got shape {_shape(x)}")
    if jnp.dtype(x.dtype) not in [jnp.dtype(d) for d in FLOAT_DTYPES]:
      raise ValueError(f"{variant}: {name} must be float16, bfloat16 or float32, got {x.dtype}"
                       + (" (accumulation is float32, so float64 would not be exact: cast the "
                          "inputs to float32)" if x.dtype == jnp.float64 else ""))
  if key.dtype != query.dtype or value.dtype != query.dtype:
    raise ValueError(f"{variant}: query, key and value must share a dtype, got "
                     f"{query.dtype}, {key.dtype}, {value.dtype}")
  B, T, N, H = query.shape
  _, S, K, _ = key.shape
  shapes = f"query {_shape(query)}, key {_shape(key)}, value {_shape(value)}"
  if _shape(value) != _shape(key):
    raise ValueError(f"{variant}: key and value shapes differ: {shapes}")
  if key.shape[0] != B or key.shape[3] != H:
    raise ValueError(f"{variant}: query and key must agree on B and H: {shapes}")
  if min(B, T, S, N, K, H) == 0:
    raise ValueError(f"{variant}: empty dimension in {shapes}")
  if N % K:
    raise ValueError(f"{variant}: query heads N={N} must be a multiple of key/value heads "
                     f"K={K}: {shapes}")
  full = (B, N, T, S)
  for name, x, kind in (("bias", bias, "float"), ("mask", mask, "bool")):
    if x is None:
      continue
    if np.ndim(x) != 4 or any(d not in (1, f) for d, f in zip(_shape(x), full)):
      raise ValueError(f"{variant}: {name} of shape {_shape(x)} is not broadcastable to "
                       f"[B, N, T, S] = {full} (each dim 1 or full size)")
    if kind == "bool" and x.dtype != jnp.bool_:
      raise ValueError(f"{variant}: mask must be bool (True = attend), got {x.dtype}")
    if kind == "float" and not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"{variant}: bias must be floating point, got {x.dtype}")
  for name, x in (("query_seq_lengths", query_seq_lengths),
                  ("key_value_seq_lengths", key_value_seq_lengths)):
    if x is None:
      continue
    dtype = getattr(x, "dtype", None)
    if _shape(x) != (B,) or dtype is None or not jnp.issubdtype(dtype, jnp.integer):
      raise ValueError(f"{variant}: {name} must be an int array of shape [B] = ({B},), got "
                       f"{getattr(x, 'dtype', type(x).__name__)} {_shape(x)}")
  return Dims(B=B, T=T, S=S, N=N, K=K, H=H)


def check_segment_ids(variant: str, segment_ids, B: int, T: int, S: int):
  """`segment_ids` as (query ids [B, T], key ids [B, S]), int32: one int array [B, T]
  (T == S: queries and keys share it) or a (query, key) pair. A query attends only keys of
  its own segment (any int is an id; packed rows number their examples)."""
  if segment_ids is None:
    return None
  pair = segment_ids if isinstance(segment_ids, (tuple, list)) else (segment_ids, segment_ids)
  if len(pair) != 2:
    raise ValueError(f"{variant}: segment_ids must be an int array [B, T] or a pair "
                     f"(query ids [B, T], key ids [B, S]), got a sequence of {len(pair)}")
  for name, x, n in (("query segment_ids", pair[0], T), ("key segment_ids", pair[1], S)):
    dtype = getattr(x, "dtype", None)
    if _shape(x) != (B, n) or dtype is None or not jnp.issubdtype(dtype, jnp.integer):
      raise ValueError(f"{variant}: {name} must be an int array of shape {(B, n)} for query "
                       f"[B, T] = {(B, T)} and key length S = {S}, got "
                       f"{getattr(x, 'dtype', type(x).__name__)} {_shape(x)}")
  if pair[0] is pair[1]:  # one array: queries and keys share it (recurrences rely on that)
    ids = jnp.asarray(pair[0], jnp.int32)
    return ids, ids
  return tuple(jnp.asarray(x, jnp.int32) for x in pair)


def restarting_segment_ids(variant: str, segment_ids, is_causal: bool):
  """The ids a restarting state reads (int [B, T], or None) from check_segment_ids' pair
  (which returns one shared array as the same object twice): one array that queries and
  keys share, in a causal call, because the state restarts where the id changes; anything
  else raises, saying what was given."""
  if segment_ids is None:
    return None
  shared = segment_ids[0] is segment_ids[1]
  if not (is_causal and shared):
    raise NotImplementedError(
        f"{variant}: segment_ids needs is_causal=True and one int array [B, T] that queries "
        f"and keys share (the causal state restarts where the id changes), got "
        f"is_causal={is_causal} and {'one array' if shared else 'a (query, key) pair'}")
  return segment_ids[0]


def segment_starts(ids):
  """bool [B, T]: where a token's id differs from the one before it (a restarting state's
  resets; never the first token, whose state is the initial one)."""
  return jnp.pad(ids[:, 1:] != ids[:, :-1], [(0, 0), (1, 0)])


def check_soft_cap(variant: str, cap) -> float | None:
  """`logit_soft_cap` as a Python float > 0 (a static argument) or None."""
  if cap is None:
    return None
  if not isinstance(cap, numbers.Real) or isinstance(cap, bool) or not math.isfinite(cap) \
      or cap <= 0:
    raise ValueError(f"{variant}: logit_soft_cap must be a finite Python float > 0 or None, "
                     f"got {cap!r}")
  return float(cap)


def check_sinks(variant: str, sinks, N: int):
  """`sinks` (one learned logit per query head, float [N]) as float32, or None."""
  if sinks is None:
    return None
  dtype = getattr(sinks, "dtype", None)
  if _shape(sinks) != (N,) or dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"{variant}: sinks must be a float array of shape [N] = ({N},) (a logit "
                     f"per query head), got {getattr(sinks, 'dtype', type(sinks).__name__)} "
                     f"{_shape(sinks)}")
  return jnp.asarray(sinks, jnp.float32)


def check_mod(variant: str, name: str, fn):
  """`score_mod` / `mask_mod`: a callable (a static argument, hashed by identity) or None."""
  if fn is not None and not callable(fn):
    score = "score, " if name == "score_mod" else ""
    raise ValueError(f"{variant}: {name} must be a function ({score}b, h, q_idx, kv_idx) or "
                     f"None, got {type(fn).__name__}")
  return fn


def check_return_residual(variant: str, flag) -> bool:
  if not isinstance(flag, (bool, np.bool_)):
    raise ValueError(f"{variant}: return_residual must be a bool, got {flag!r}")
  return bool(flag)


def _leading_ones(x, rank: int):
  """x with unit axes prepended up to `rank` (as `jax.nn.dot_product_attention` does)."""
  if x is None or np.ndim(x) >= rank:
    return x
  return jnp.reshape(x, (1,) * (rank - np.ndim(x)) + _shape(x))


def call_forms(variant: str):
  """Decorator of a variant: brings every form of the arguments that
  `jax.nn.dot_product_attention` accepts to the one form the kernel assumes, checks
  them, and so decides their meaning in one place for every variant:

  - query, key and value of rank 3 ([T, N, H], no batch) are a batch of one (the lengths
    then have shape [1]) and the output has the query's rank; ranks other than 3 and 4
    are refused. A mask or bias of rank below 4 gets leading unit axes.
  - `*_seq_lengths` are clipped to [0, axis length]: a length past the end means the
    whole axis (as in JAX), zero or negative means no position (those rows give zeros).
  - `local_window_size` becomes `(left, right)`, clipped to (T - 1, S - 1).
  - `segment_ids` becomes a (query ids [B, T], key ids [B, S]) pair (`check_segment_ids`);
    `logit_soft_cap` a float > 0, `sinks` float32 [N], `score_mod` and `mask_mod` functions
    (FlexAttention's, static); `return_residual` a bool: True returns (output, the
    log-sum-exp of each query row's logits [B, T, N]), as `jax.nn.dot_product_attention`.
    A variant whose function lacks one of these parameters refuses it
    (NotImplementedError), never ignores it.
  """
  def decorate(fn):
    takes = set(inspect.signature(fn).parameters)

    @functools.wraps(fn)
    def wrapper(query, key, value, bias=None, mask=None, *, query_seq_lengths=None,
                key_value_seq_lengths=None, local_window_size=None, segment_ids=None,
                logit_soft_cap=None, sinks=None, score_mod=None, mask_mod=None,
                return_residual=False, **kwargs):
      out_rank = np.ndim(query)
      query, key, value = (_leading_ones(x, 4) if np.ndim(x) == 3 else x
                           for x in (query, key, value))
      bias, mask = _leading_ones(bias, 4), _leading_ones(mask, 4)
      if out_rank == 3 and segment_ids is not None:  # [T] ids of an unbatched call
        segment_ids = (tuple(_leading_ones(x, 2) for x in segment_ids)
                       if isinstance(segment_ids, (tuple, list)) else
                       _leading_ones(segment_ids, 2))
      dims = check_inputs(variant, query, key, value, bias, mask,
                          query_seq_lengths=query_seq_lengths,
                          key_value_seq_lengths=key_value_seq_lengths)
      extra = dict(segment_ids=check_segment_ids(variant, segment_ids, dims.B, dims.T, dims.S),
                   logit_soft_cap=check_soft_cap(variant, logit_soft_cap),
                   sinks=check_sinks(variant, sinks, dims.N),
                   score_mod=check_mod(variant, "score_mod", score_mod),
                   mask_mod=check_mod(variant, "mask_mod", mask_mod),
                   return_residual=check_return_residual(variant, return_residual))
      unsupported(variant, **{a: x for a, x in extra.items() if a not in takes})
      kwargs.update({a: x for a, x in extra.items() if a in takes})
      window = clip_window(normalize_window(variant, local_window_size), dims.T, dims.S)
      out = fn(query, key, value, bias, mask,
               query_seq_lengths=clip_lengths(query_seq_lengths, dims.T),
               key_value_seq_lengths=clip_lengths(key_value_seq_lengths, dims.S),
               local_window_size=window, **kwargs)
      if out_rank == 3:  # (output, residual) or the output
        return tuple(x[0] for x in out) if isinstance(out, tuple) else out[0]
      return out
    return wrapper
  return decorate


def unsupported(variant: str, **arguments) -> None:
  """Raises for each argument a variant cannot honour (never ignored)."""
  for name, value in arguments.items():
    if value is not None and value is not False:
      raise NotImplementedError(f"{variant} attention does not support {name}")
