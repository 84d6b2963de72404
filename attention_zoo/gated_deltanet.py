"""Gated DeltaNet (Yang, Kautz, Hatamizadeh 2024): the delta rule with a decay per head.

  S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T (scale q_t)

log_gate g [B, T, N] (<= 0) and beta [B, T, N] (in (0, 1)) are per query head. Computed
chunkwise in the WY/UT form with one triangular solve per chunk (chunkwise.py). No
normaliser. The recurrence is a contraction only for unit-norm keys (|k|^2 beta < 2): the
papers L2-normalise q and k, which the layer does (registry entry `normalize_qk`).
"""

from __future__ import annotations

from attention_zoo import chunkwise, recurrence, validation

NAME = "gated_deltanet"

# Forward+backward at T=8192 (B=1, N=8, H=64) on the 2-core CPU, min of 5 interleaved runs
# (deltanet, the same code): 32 fastest (305 ms; 64: +18%, 16: +37%).
CHUNK_SIZE = 32


@recurrence.call_forms(NAME)
def gated_deltanet_attention(query, key, value, bias=None, mask=None, *, scale=None,
                             is_causal=False, query_seq_lengths=None,
                             key_value_seq_lengths=None,
                             segment_ids=None, local_window_size=None, log_gate=None,
                             beta=None, chunk_size=CHUNK_SIZE, chunk_form=None):
  """Gated DeltaNet over [B, T, N, H] queries; needs is_causal=True, T == S, log_gate, beta.

  A dense mask, bias or window raises NotImplementedError. Keys past a key length are
  identity steps; queries past a query length output zeros. `segment_ids` (int [B, T]):
  the state restarts where the id changes (packed sequences, recurrence.py). `chunk_form`:
  "scan", "parallel" or None (by platform), chunkwise.py.
  """
  return chunkwise_with_state(
      query, key, value, bias, mask, scale=scale, is_causal=is_causal,
      query_seq_lengths=query_seq_lengths, key_value_seq_lengths=key_value_seq_lengths,
      segment_ids=segment_ids,
      local_window_size=local_window_size, log_gate=log_gate, beta=beta,
      chunk_size=chunk_size, chunk_form=chunk_form)[0]


def chunkwise_with_state(query, key, value, bias=None, mask=None, *, scale=None,
                         is_causal=True, query_seq_lengths=None, key_value_seq_lengths=None,
                         segment_ids=None,
                         local_window_size=None, log_gate=None, beta=None, initial_state=None,
                         chunk_size=CHUNK_SIZE, chunk_form=None, variant=NAME, uses_gate=True):
  """The chunkwise form from `initial_state` (None = zeros): (out, {'state': [B, N, H, H]}).

  `variant` and `uses_gate` let deltanet run this code with no gate (g = 0)."""
  check_options(chunk_size, chunk_form, variant)
  x = recurrence.prepare(variant, query, key, value, bias, mask, scale=scale,
                         is_causal=is_causal, query_seq_lengths=query_seq_lengths,
                         key_value_seq_lengths=key_value_seq_lengths, segment_ids=segment_ids,
                         local_window_size=local_window_size, log_gate=log_gate, beta=beta,
                         uses_gate=uses_gate, uses_beta=True, initial_state=initial_state)
  out, state = chunkwise.delta_rule(x, chunk_size, chunk_form)
  return recurrence.finish(x, out), dict(state=state)


def recurrent_scan(query, key, value, *, scale=None, log_gate=None, beta=None,
                   query_seq_lengths=None, key_value_seq_lengths=None,
                   segment_ids=None, initial_state=None,
                   variant=NAME, uses_gate=True, **_chunk_options):
  """The same function token by token (a lax.scan over T): (out, state). A reference."""
  x = recurrence.prepare(variant, query, key, value, scale=scale,
                         query_seq_lengths=query_seq_lengths,
                         key_value_seq_lengths=key_value_seq_lengths,
                         segment_ids=segment_ids, log_gate=log_gate,
                         beta=beta, uses_gate=uses_gate, uses_beta=True,
                         initial_state=initial_state)
  out, state = recurrence.scan(x)
  return recurrence.finish(x, out), state


def check_options(chunk_size=CHUNK_SIZE, chunk_form=None, variant=NAME):
  validation.check_positive(variant, chunk_size=chunk_size)
  chunkwise.check_form(variant, chunk_form)


def init_state(batch, num_heads, kv_heads, head_dim, **_options):
  """The decoding state: {'state': zeros [B, N, H, H]} (one per query head)."""
  return recurrence.init_state(batch, num_heads, head_dim)


def recurrent_step(state, query, key, value, *, scale=None, log_gate=None, beta=None,
                   **_whole_sequence_options):
  """One token (query [B, 1, N, H], key/value [B, 1, K, H], log_gate and beta [B, 1, N]):
  (out [B, 1, N, H], new state), equal to `gated_deltanet_attention` at that position."""
  return recurrence.decode(NAME, state, query, key, value, scale=scale, log_gate=log_gate,
                           beta=beta, uses_beta=True)
