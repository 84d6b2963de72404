"""Independent references for the tests: JAX's own attention and a numpy mask builder."""

import jax
import numpy as np


def reference(query, key, value, bias=None, mask=None, **kwargs):
  return jax.nn.dot_product_attention(query, key, value, bias, mask, implementation="xla",
                                      **kwargs)


def allowed(B, N, T, S, mask=None, is_causal=False, local_window_size=None,
            query_seq_lengths=None, key_value_seq_lengths=None):
  """bool [B, N, T, S]: may query i attend key j? Built with numpy loops' semantics."""
  i, j = np.arange(T)[:, None], np.arange(S)[None, :]
  ok = np.ones((B, N, T, S), bool)
  if mask is not None:
    ok &= np.asarray(mask)
  if is_causal:
    ok &= j <= i
  if local_window_size is not None:
    left, right = ((local_window_size,) * 2 if isinstance(local_window_size, int)
                   else local_window_size)
    ok &= (j >= i - left) & (j <= i + right)
  if query_seq_lengths is not None:
    ok &= (i[None] < np.asarray(query_seq_lengths)[:, None, None])[:, None]
  if key_value_seq_lengths is not None:
    ok &= (j[None] < np.asarray(key_value_seq_lengths)[:, None, None])[:, None]
  return ok


def live_rows(B, N, T, S, **kwargs):
  """float [B, T, N, 1]: 1 where the query row can attend at least one key."""
  ok = allowed(B, N, T, S, **kwargs).any(axis=-1)  # [B, N, T]
  return ok.transpose(0, 2, 1)[..., None].astype(np.float32)
