"""DeltaNet (Schlag et al. 2021; chunkwise: Yang et al. 2024): the delta rule, no decay.

  S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T (scale q_t)

beta [B, T, N] in (0, 1), per query head. It is Gated DeltaNet with a zero gate and runs
that code. The recurrence is a contraction only for unit-norm keys: the papers
L2-normalise q and k, which the layer does (registry entry `normalize_qk`).
"""

from __future__ import annotations

from attention_zoo import gated_deltanet, recurrence

NAME = "deltanet"

CHUNK_SIZE = gated_deltanet.CHUNK_SIZE  # measured there, on this code


@recurrence.call_forms(NAME)
def deltanet_attention(query, key, value, bias=None, mask=None, *, scale=None, is_causal=False,
                       query_seq_lengths=None, key_value_seq_lengths=None, segment_ids=None,
                       local_window_size=None, beta=None, chunk_size=CHUNK_SIZE,
                       chunk_form=None):
  """DeltaNet over [B, T, N, H] queries; needs is_causal=True, T == S and `beta`.

  A dense mask, bias or window raises NotImplementedError. Keys past a key length are
  identity steps; queries past a query length output zeros. `segment_ids` (int [B, T]):
  the state restarts where the id changes (packed sequences, recurrence.py). `chunk_form`:
  "scan", "parallel" or None (by platform), chunkwise.py.
  """
  return chunkwise_with_state(
      query, key, value, bias, mask, scale=scale, is_causal=is_causal,
      query_seq_lengths=query_seq_lengths, key_value_seq_lengths=key_value_seq_lengths,
      segment_ids=segment_ids,
      local_window_size=local_window_size, beta=beta, chunk_size=chunk_size,
      chunk_form=chunk_form)[0]


def chunkwise_with_state(query, key, value, bias=None, mask=None, *, scale=None,
                         is_causal=True, query_seq_lengths=None, key_value_seq_lengths=None,
                         segment_ids=None,
                         local_window_size=None, beta=None, initial_state=None,
                         chunk_size=CHUNK_SIZE, chunk_form=None):
  """The chunkwise form from `initial_state` (None = zeros): (out, {'state': [B, N, H, H]})."""
  return gated_deltanet.chunkwise_with_state(
      query, key, value, bias, mask, scale=scale, is_causal=is_causal,
      query_seq_lengths=query_seq_lengths, key_value_seq_lengths=key_value_seq_lengths,
      segment_ids=segment_ids,
      local_window_size=local_window_size, beta=beta, initial_state=initial_state,
      chunk_size=chunk_size, chunk_form=chunk_form, variant=NAME, uses_gate=False)


def recurrent_scan(query, key, value, *, scale=None, beta=None, query_seq_lengths=None,
                   key_value_seq_lengths=None,
                   segment_ids=None, initial_state=None, **_chunk_options):
  """The same function token by token (a lax.scan over T): (out, state). A reference."""
  return gated_deltanet.recurrent_scan(
      query, key, value, scale=scale, beta=beta, query_seq_lengths=query_seq_lengths,
      key_value_seq_lengths=key_value_seq_lengths,
      segment_ids=segment_ids, initial_state=initial_state, variant=NAME,
      uses_gate=False)


def check_options(chunk_size=CHUNK_SIZE, chunk_form=None):
  gated_deltanet.check_options(chunk_size, chunk_form, variant=NAME)


def init_state(batch, num_heads, kv_heads, head_dim, **_options):
  """The decoding state: {'state': zeros [B, N, H, H]} (one per query head)."""
  return recurrence.init_state(batch, num_heads, head_dim)


def recurrent_step(state, query, key, value, *, scale=None, beta=None,
                   **_whole_sequence_options):
  """One token (query [B, 1, N, H], key/value [B, 1, K, H], beta [B, 1, N]):
  (out [B, 1, N, H], new state), equal to `deltanet_attention` at that position."""
  return recurrence.decode(NAME, state, query, key, value, scale=scale, beta=beta,
                           uses_gate=False, uses_beta=True)
