"""Local (sliding-window) attention: softmax restricted to the band i - left <= j <= i + right.

What it computes is `softmax` with `local_window_size`; how is the blocked kernel of
`chunked` with blocks sized to the window, so only the key blocks that overlap the
band are visited: time O(T·(w + block)), memory O(T + S), forward and backward.
"""

from __future__ import annotations

from attention_zoo import chunked, validation

NAME = "local"
# Measured at T=8192, windows (128, 128) and causal (256, 0), forward+backward: 64-row
# blocks 182 ms, 128 rows 200-250 ms, 256 rows 230-320 ms (`python launch.py bench`
# with configs/bench/attention.py and --config.variants=local:block_size=...).
DEFAULT_BLOCK_SIZE = 64


@validation.call_forms(NAME)
def local_attention(query, key, value, bias=None, mask=None, *, scale=None, is_causal=False,
                    query_seq_lengths=None, key_value_seq_lengths=None, local_window_size=None,
                    segment_ids=None, logit_soft_cap=None, sinks=None, score_mod=None,
                    mask_mod=None, return_residual=False, block_size=DEFAULT_BLOCK_SIZE):
  """Softmax attention within `local_window_size` (required: bound at lookup or passed).

  Causal or bidirectional, symmetric (an int) or asymmetric `(left, right)` windows;
  mask and bias are read only inside the band. Rows that can attend no key return zeros.
  `return_residual`, soft cap, sinks, segment ids and mods as in `chunked`.
  """
  if local_window_size is None:
    raise ValueError(f"{NAME}: local_window_size is required, e.g. "
                     f"attention_zoo.get('local', local_window_size=(128, 0))")
  check_options(block_size)
  return chunked.blocked_attention(NAME, query, key, value, bias, mask, scale=scale,
                                   is_causal=is_causal, query_seq_lengths=query_seq_lengths,
                                   key_value_seq_lengths=key_value_seq_lengths,
                                   local_window_size=local_window_size,
                                   segment_ids=segment_ids, logit_soft_cap=logit_soft_cap,
                                   sinks=sinks, score_mod=score_mod, mask_mod=mask_mod,
                                   return_residual=return_residual,
                                   query_chunk_size=block_size, key_chunk_size=block_size)


def check_options(block_size=DEFAULT_BLOCK_SIZE):
  validation.check_positive(NAME, block_size=block_size)
