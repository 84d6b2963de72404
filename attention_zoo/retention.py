"""Retention (RetNet, Sun et al. 2023): causal linear attention with a fixed decay per head.

  S_t = gamma_n S_{t-1} + k_t v_t^T,   o_t = S_t^T (scale q_t)

It is GLA with a constant one-per-head gate log(gamma_n), and runs GLA's chunkwise code.
`decay`: None gives RetNet's gamma_n = 1 - 2^(-5 - n), n = 0..N-1; or a tuple of N floats in
(0, 1). RetNet's rotations (xPos) and group norm belong to the layer, not here.
"""

from __future__ import annotations

import numbers

import jax.numpy as jnp
import numpy as np

from attention_zoo import chunkwise, recurrence, validation

NAME = "retention"

# Forward+backward at T=8192 (B=1, N=8, H=64) on the 2-core CPU, min of 5 interleaved runs:
# 64 fastest (159 ms; 32: +4%, 128: +12%).
CHUNK_SIZE = 64


def decays(num_heads: int, decay=None) -> np.ndarray:
  """gamma per head, float64 [N]."""
  if decay is None:
    return 1.0 - 2.0 ** (-5.0 - np.arange(num_heads))
  if len(decay) != num_heads:
    raise ValueError(f"{NAME}: decay has {len(decay)} values for N={num_heads} query heads")
  return np.asarray(decay, np.float64)


def _log_gate(query, decay):
  """log(gamma) as GLA's [B, T, N] input."""
  B, T, N, _ = query.shape
  return jnp.broadcast_to(jnp.asarray(np.log(decays(N, decay)), jnp.float32), (B, T, N))


@recurrence.call_forms(NAME)
def retention_attention(query, key, value, bias=None, mask=None, *, scale=None,
                        is_causal=False, query_seq_lengths=None, key_value_seq_lengths=None,
                        segment_ids=None,
                        local_window_size=None, decay=None, chunk_size=CHUNK_SIZE,
                        chunk_form=None):
  """Retention over [B, T, N, H] queries; needs is_causal=True and T == S.

  A dense mask, bias or window raises NotImplementedError. Keys past a key length are
  identity steps; queries past a query length output zeros. `segment_ids` (int [B, T]):
  the state restarts where the id changes (packed sequences, recurrence.py). `chunk_form`:
  "scan", "parallel" or None (by platform), chunkwise.py.
  """
  return chunkwise_with_state(
      query, key, value, bias, mask, scale=scale, is_causal=is_causal,
      query_seq_lengths=query_seq_lengths, key_value_seq_lengths=key_value_seq_lengths,
      segment_ids=segment_ids,
      local_window_size=local_window_size, decay=decay, chunk_size=chunk_size,
      chunk_form=chunk_form)[0]


def chunkwise_with_state(query, key, value, bias=None, mask=None, *, scale=None,
                         is_causal=True, query_seq_lengths=None, key_value_seq_lengths=None,
                         segment_ids=None,
                         local_window_size=None, initial_state=None, decay=None,
                         chunk_size=CHUNK_SIZE, chunk_form=None):
  """The chunkwise form from `initial_state` (None = zeros): (out, {'state': [B, N, H, H]})."""
  check_options(decay, chunk_size, chunk_form)
  validation.check_inputs(NAME, query, key, value, bias, mask)  # before reading N
  x = recurrence.prepare(NAME, query, key, value, bias, mask, scale=scale, is_causal=is_causal,
                         query_seq_lengths=query_seq_lengths,
                         key_value_seq_lengths=key_value_seq_lengths, segment_ids=segment_ids,
                         local_window_size=local_window_size,
                         log_gate=_log_gate(query, decay), initial_state=initial_state)
  out, state = chunkwise.gated_linear(x, chunk_size, chunk_size,  # no sub-chunks: one gate
                                      chunk_form)
  return recurrence.finish(x, out), dict(state=state)


def recurrent_scan(query, key, value, *, scale=None, query_seq_lengths=None,
                   key_value_seq_lengths=None, segment_ids=None, initial_state=None, decay=None,
                   **_chunk_options):
  """The same function token by token (a lax.scan over T): (out, state). A reference."""
  check_options(decay)
  validation.check_inputs(NAME, query, key, value)
  x = recurrence.prepare(NAME, query, key, value, scale=scale,
                         query_seq_lengths=query_seq_lengths,
                         key_value_seq_lengths=key_value_seq_lengths, segment_ids=segment_ids,
                         log_gate=_log_gate(query, decay), initial_state=initial_state)
  out, state = recurrence.scan(x)
  return recurrence.finish(x, out), state


def check_options(decay=None, chunk_size=CHUNK_SIZE, chunk_form=None):
  validation.check_positive(NAME, chunk_size=chunk_size)
  chunkwise.check_form(NAME, chunk_form)
  if decay is None:
    return
  if (not isinstance(decay, (tuple, list)) or not decay
      or not all(isinstance(d, numbers.Real) and not isinstance(d, bool) and 0 < d < 1
                 for d in decay)):
    raise ValueError(f"{NAME}: decay must be None or a tuple of floats in (0, 1), one per "
                     f"query head, got {decay!r}")


def init_state(batch, num_heads, kv_heads, head_dim, **_options):
  """The decoding state: {'state': zeros [B, N, H, H]} (one per query head)."""
  return recurrence.init_state(batch, num_heads, head_dim)


def recurrent_step(state, query, key, value, *, scale=None, decay=None,
                   **_whole_sequence_options):
  """One token (query [B, 1, N, H], key/value [B, 1, K, H]): (out [B, 1, N, H], new state),
  equal to `retention_attention` at that position."""
  check_options(decay)
  validation.check_inputs(NAME, query, key, value)
  return recurrence.decode(NAME, state, query, key, value, scale=scale,
                           log_gate=_log_gate(query, decay))
