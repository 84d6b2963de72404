"""What retention, gla, deltanet and gated_deltanet share: checks, layout, the token step.

Each query head n keeps a state S [H, H] (key dim x value dim), S_0 = 0, and for t = 1..T

  S_t = diag(exp(g_t)) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T (scale q_t)

where the gated-linear family (retention, gla) has no delta term and beta = 1, and the delta
rule without a gate (deltanet) has g = 0. With K < N key/value heads, each query head keeps
its own state over its group's keys and values; gates and beta are per query head.

Inside the library the arrays are heads-first and float32: q, k, v [B, N, T, H] (q already
scaled, k and v repeated over each group), log_gate [B, N, T, 1 or H], beta [B, N, T].
Padding: keys at or past `key_value_seq_lengths` become identity steps (no update, no decay);
queries at or past `query_seq_lengths` output zeros. Packing: with `segment_ids` the state
is reset to zero before every token whose id differs from the token before it, so each run
of equal ids (a packed example) is computed as if it were alone; the initial state belongs
to the first run.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from attention_zoo import validation


class Prepared(NamedTuple):
  q: jax.Array           # [B, N, T, H], times scale
  k: jax.Array           # [B, N, T, H]
  v: jax.Array           # [B, N, T, H]
  log_gate: jax.Array | None  # [B, N, T, 1] (one per head) or [B, N, T, H]; None: no gate
  beta: jax.Array | None  # [B, N, T], or None for the gated-linear family
  resets: jax.Array | None  # bool [B, 1, T]: the state is zeroed before token t; None: never
  silent: jax.Array | None  # bool [B, T]: rows of a run that starts past the key length
  initial: jax.Array     # [B, N, H, H] the state before the first token
  query_seq_lengths: jax.Array | None
  dtype: jnp.dtype       # the output's (the query's)


def call_forms(variant: str):
  """`validation.call_forms` (unbatched [T, N, H] calls, clipped lengths), with the per-token
  inputs of an unbatched call ([T, N] or [T, N, H]) given a batch axis of one too."""
  def decorate(fn):
    inner = validation.call_forms(variant)(fn)

    @functools.wraps(fn)
    def wrapper(query, key, value, *args, **kwargs):
      if np.ndim(query) == 3:
        kwargs.update({name: jnp.asarray(kwargs[name])[None] for name in ("log_gate", "beta")
                       if kwargs.get(name) is not None})
      return inner(query, key, value, *args, **kwargs)
    return wrapper
  return decorate


def check_input(variant: str, name: str, x, query_shape, per_head_dim=(False,)) -> None:
  """A per-token input (log_gate, beta): present, float, [B, T, N] or [B, T, N, H]."""
  shapes = [tuple(query_shape[:3]) + ((query_shape[3],) if full else ()) for full in
            per_head_dim]
  wanted = " or ".join(str(s) for s in shapes)
  if x is None:
    raise ValueError(f"{variant}: {name} is required, a float array of shape {wanted} for "
                     f"query {tuple(query_shape)}")
  if tuple(np.shape(x)) not in shapes:
    raise ValueError(f"{variant}: {name} must have shape {wanted} for query "
                     f"{tuple(query_shape)}, got {tuple(np.shape(x))}")
  if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    raise ValueError(f"{variant}: {name} must be floating point, got {jnp.result_type(x)}")


def check_state(variant: str, state, query_shape) -> jax.Array:
  B, _, N, H = query_shape
  s = state["state"] if isinstance(state, dict) else None
  if s is None or tuple(np.shape(s)) != (B, N, H, H):
    raise ValueError(f"{variant}: state must be a dict with 'state' of shape {(B, N, H, H)} "
                     f"for query {tuple(query_shape)}, got "
                     f"{None if s is None else tuple(np.shape(s))}")
  return s.astype(jnp.float32)


def prepare(variant: str, query, key, value, bias=None, mask=None, *, scale=None,
            is_causal=True, query_seq_lengths=None, key_value_seq_lengths=None,
            local_window_size=None, log_gate=None, beta=None, gate_per_head_dim=(False,),
            uses_gate=True, uses_beta=False, initial_state=None, segment_ids=None) -> Prepared:
  """Checks every argument (before any computation), then lays the inputs out."""
  dims = validation.check_inputs(variant, query, key, value, bias, mask,
                                 query_seq_lengths=query_seq_lengths,
                                 key_value_seq_lengths=key_value_seq_lengths)
  if uses_gate:
    check_input(variant, "log_gate", log_gate, query.shape, gate_per_head_dim)
  if uses_beta:
    check_input(variant, "beta", beta, query.shape)
  validation.unsupported(variant, bias=bias, mask=mask, local_window_size=local_window_size)
  if not is_causal:
    raise NotImplementedError(f"{variant} attention does not support is_causal=False: it is a "
                              "causal recurrence (pass is_causal=True)")
  if dims.T != dims.S:
    raise NotImplementedError(f"{variant} attention does not support a key length S={dims.S} "
                              f"other than the query length T={dims.T}")
  ids = validation.restarting_segment_ids(
      variant, validation.check_segment_ids(variant, segment_ids, dims.B, dims.T, dims.S),
      is_causal)
  B, T, N, H = query.shape
  scale = validation.default_scale(variant, scale, H)
  initial = (jnp.zeros((B, N, H, H), jnp.float32) if initial_state is None
             else check_state(variant, initial_state, query.shape))
  heads_first = lambda x: jnp.moveaxis(jnp.asarray(x, jnp.float32), 1, 2)
  q = heads_first(query) * scale
  k, v = (jnp.repeat(heads_first(x), dims.G, axis=1) for x in (key, value))
  g = None if log_gate is None else heads_first(log_gate)
  g = g[..., None] if g is not None and g.ndim == 3 else g
  b = None if beta is None else heads_first(beta)
  if key_value_seq_lengths is not None:
    live = jnp.arange(T)[None, None, :] < key_value_seq_lengths[:, None, None]  # [B, 1, T]
    k, v = (jnp.where(live[..., None], x, 0.0) for x in (k, v))
    g = None if g is None else jnp.where(live[..., None], g, 0.0)
    b = None if b is None else jnp.where(live, b, 0.0)
  resets = silent = None
  if ids is not None:
    changes = validation.segment_starts(ids)                                 # [B, T]
    resets = changes[:, None]
    if key_value_seq_lengths is not None:  # padding stays identity steps: the final state
      resets &= live                       # is the one after the last key, and a run that
      runs = jnp.cumsum(changes, axis=1)   # starts in the padding has no key: zero rows
      last_key = jnp.clip(key_value_seq_lengths - 1, 0, T - 1)[:, None]
      last = jnp.take_along_axis(runs, last_key, axis=1)
      silent = runs > last
  rows = query_seq_lengths
  if key_value_seq_lengths is not None:  # no key at all: every row attends none, zeros
    rows = jnp.where(key_value_seq_lengths <= 0, 0, T if rows is None else rows)
  return Prepared(q, k, v, g, b, resets, silent, initial, rows, query.dtype)


def finish(x: Prepared, out) -> jax.Array:
  """[B, N, T, H] float32 -> [B, T, N, H] in the query's dtype, zero past query lengths."""
  out = jnp.moveaxis(out, 1, 2)
  if x.query_seq_lengths is not None:
    live = jnp.arange(out.shape[1])[None, :] < x.query_seq_lengths[:, None]
    out = jnp.where(live[:, :, None, None], out, 0.0)
  if x.silent is not None:
    out = jnp.where(x.silent[:, :, None, None], 0.0, out)
  return out.astype(x.dtype)


def init_state(batch: int, num_heads: int, head_dim: int) -> dict:
  """The decoding state: S [B, N, H, H] per query head, float32, zero."""
  return dict(state=jnp.zeros((batch, num_heads, head_dim, head_dim), jnp.float32))


def step(s, q, k, v, g, beta=None, reset=None):
  """One token: s [B, N, H, H]; q, k, v [B, N, H]; g [B, N, 1 or H] or None (no decay);
  beta [B, N] or None (no delta term); reset bool [B, 1] or None: start from a zero state."""
  s = s if reset is None else jnp.where(reset[..., None, None], 0.0, s)
  s = s if g is None else jnp.exp(g)[..., None] * s
  if beta is None:
    s = s + k[..., :, None] * v[..., None, :]
  else:  # (I - beta k k^T) s + beta k v^T, written as a rank-one correction of s
    error = v - jnp.einsum("bnk,bnkv->bnv", k, s)
    s = s + (beta[..., None, None] * k[..., :, None]) * error[..., None, :]
  return s, jnp.einsum("bnk,bnkv->bnv", q, s)


def scan(x: Prepared):
  """The token-by-token recurrence (flash-linear-attention's naive.py): one lax.scan step per
  token. O(T) sequential steps; the benchmark's baseline and a readable reference."""
  xs = tuple(None if a is None else jnp.moveaxis(a, 2, 0)
             for a in (x.q, x.k, x.v, x.log_gate, x.beta, x.resets))

  final, out = jax.lax.scan(lambda s, inputs: step(s, *inputs), x.initial, xs)
  return jnp.moveaxis(out, 0, 2), dict(state=final)


def decode(variant: str, state, query, key, value, *, scale=None, log_gate=None, beta=None,
           gate_per_head_dim=(False,), uses_gate=True, uses_beta=False):
  """One decoding step (T = S = 1): (out [B, 1, N, H] in the query's dtype, new state)."""
  if np.ndim(query) == 4 and (query.shape[1] != 1 or np.shape(key)[1:2] != (1,)):
    raise ValueError(f"{variant}: a decoding step takes one token, got query "
                     f"{tuple(query.shape)}, key {tuple(np.shape(key))}")
  x = prepare(variant, query, key, value, scale=scale, log_gate=log_gate, beta=beta,
              gate_per_head_dim=gate_per_head_dim, uses_gate=uses_gate, uses_beta=uses_beta,
              initial_state=state)
  s, out = step(x.initial, *(None if a is None else a[:, :, 0]
                             for a in (x.q, x.k, x.v, x.log_gate, x.beta)))
  return finish(x, out[:, :, None]), dict(state=s)
