"""Gated linear attention (GLA, Yang et al. 2023), and with one gate per head the SSD form of
Mamba-2 (Dao & Gu 2024): a causal linear recurrence with a data-dependent decay.

  S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,   o_t = S_t^T (scale q_t),   g_t = log_gate <= 0

log_gate is [B, T, N, H] (a decay per key dimension) or [B, T, N] (one per head). Computed
chunkwise (chunkwise.py); with per-key-dim gates each chunk is halved down to sub-chunks so
that no exp overflows. No normaliser. Gates must be <= 0 (not checked: they are traced).
"""

from __future__ import annotations

from attention_zoo import chunkwise, recurrence, validation

NAME = "gla"
GATE_PER_HEAD_DIM = (True, False)  # log_gate may be [B, T, N, H] or [B, T, N]

# Forward+backward at T=8192 (B=1, N=8, H=64, per-key-dim gates) on the 2-core CPU, min of 5
# interleaved runs: chunk 32 with sub-chunks of 4 fastest (277 ms; 64/4: +12%, 32/8: +12%,
# 32/2: +7%, 16/4: +28%).
CHUNK_SIZE, SUB_CHUNK_SIZE = 32, 4


@recurrence.call_forms(NAME)
def gla_attention(query, key, value, bias=None, mask=None, *, scale=None, is_causal=False,
                  query_seq_lengths=None, key_value_seq_lengths=None,
                  segment_ids=None, local_window_size=None,
                  log_gate=None, chunk_size=CHUNK_SIZE, sub_chunk_size=SUB_CHUNK_SIZE,
                  chunk_form=None):
  """GLA over [B, T, N, H] queries; needs is_causal=True, T == S and `log_gate`.

  A dense mask, bias or window raises NotImplementedError. Keys past a key length are
  identity steps; queries past a query length output zeros. `segment_ids` (int [B, T]):
  the state restarts where the id changes (packed sequences, recurrence.py). `chunk_form`:
  "scan", "parallel" or None (by platform), chunkwise.py.
  """
  return chunkwise_with_state(
      query, key, value, bias, mask, scale=scale, is_causal=is_causal,
      query_seq_lengths=query_seq_lengths, key_value_seq_lengths=key_value_seq_lengths,
      segment_ids=segment_ids,
      local_window_size=local_window_size, log_gate=log_gate, chunk_size=chunk_size,
      sub_chunk_size=sub_chunk_size, chunk_form=chunk_form)[0]


def chunkwise_with_state(query, key, value, bias=None, mask=None, *, scale=None,
                         is_causal=True, query_seq_lengths=None, key_value_seq_lengths=None,
                         segment_ids=None,
                         local_window_size=None, log_gate=None, initial_state=None,
                         chunk_size=CHUNK_SIZE, sub_chunk_size=SUB_CHUNK_SIZE, chunk_form=None):
  """The chunkwise form from `initial_state` (None = zeros): (out, {'state': [B, N, H, H]})."""
  check_options(chunk_size, sub_chunk_size, chunk_form)
  x = recurrence.prepare(NAME, query, key, value, bias, mask, scale=scale, is_causal=is_causal,
                         query_seq_lengths=query_seq_lengths,
                         key_value_seq_lengths=key_value_seq_lengths, segment_ids=segment_ids,
                         local_window_size=local_window_size, log_gate=log_gate,
                         gate_per_head_dim=GATE_PER_HEAD_DIM, initial_state=initial_state)
  out, state = chunkwise.gated_linear(x, chunk_size, sub_chunk_size, chunk_form)
  return recurrence.finish(x, out), dict(state=state)


def recurrent_scan(query, key, value, *, scale=None, log_gate=None, query_seq_lengths=None,
                   key_value_seq_lengths=None,
                   segment_ids=None, initial_state=None, **_chunk_options):
  """The same function token by token (a lax.scan over T): (out, state). A reference."""
  x = recurrence.prepare(NAME, query, key, value, scale=scale,
                         query_seq_lengths=query_seq_lengths,
                         key_value_seq_lengths=key_value_seq_lengths,
                         segment_ids=segment_ids, log_gate=log_gate,
                         gate_per_head_dim=GATE_PER_HEAD_DIM, initial_state=initial_state)
  out, state = recurrence.scan(x)
  return recurrence.finish(x, out), state


def check_options(chunk_size=CHUNK_SIZE, sub_chunk_size=SUB_CHUNK_SIZE, chunk_form=None):
  validation.check_positive(NAME, chunk_size=chunk_size, sub_chunk_size=sub_chunk_size)
  chunkwise.check_form(NAME, chunk_form)
  ratio = chunk_size // sub_chunk_size
  if chunk_size % sub_chunk_size or ratio & (ratio - 1):
    raise ValueError(f"{NAME}: sub_chunk_size must be chunk_size over a power of two (chunks "
                     f"are halved down to sub-chunks), got sub_chunk_size={sub_chunk_size}, "
                     f"chunk_size={chunk_size}")


def init_state(batch, num_heads, kv_heads, head_dim, **_options):
  """The decoding state: {'state': zeros [B, N, H, H]} (one per query head)."""
  return recurrence.init_state(batch, num_heads, head_dim)


def recurrent_step(state, query, key, value, *, scale=None, log_gate=None,
                   **_whole_sequence_options):
  """One token (query [B, 1, N, H], key/value [B, 1, K, H], log_gate [B, 1, N(, H)]):
  (out [B, 1, N, H], new state), equal to `gla_attention` at that position."""
  return recurrence.decode(NAME, state, query, key, value, scale=scale, log_gate=log_gate,
                           gate_per_head_dim=GATE_PER_HEAD_DIM)
