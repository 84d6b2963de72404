"""Argument checks shared by every variant, run at trace time before any computation.

Dimension letters (JAX's): B batch, T query length, S key length, N query heads,
K key/value heads, G = N // K query heads per key/value head, H head dim.
"""

from __future__ import annotations

import dataclasses
import numbers

import jax.numpy as jnp
import numpy as np

FLOAT_DTYPES = (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64)


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


def normalize_window(variant: str, window) -> tuple[int, int] | None:
  """`local_window_size` as `(left, right)`: an int w means `(w, w)`."""
  if window is None:
    return None
  if isinstance(window, numbers.Integral) and not isinstance(window, bool):
    window = (int(window), int(window))
  if (not isinstance(window, (tuple, list)) or len(window) != 2
      or not all(isinstance(w, numbers.Integral) and not isinstance(w, bool) for w in window)):
    raise ValueError(f"{variant}: local_window_size must be an int or a (left, right) pair of "
                     f"ints, got {window!r}")
  left, right = int(window[0]), int(window[1])
  if left < 0 or right < 0:
    raise ValueError(f"{variant}: local_window_size must be non-negative, got {(left, right)}")
  return left, right


def check_positive(variant: str, **sizes) -> None:
  for name, value in sizes.items():
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
      raise ValueError(f"{variant}: {name} must be a positive int, got {value!r}")


def check_scale(variant: str, scale) -> float | None:
  if scale is None:
    return None
  if not isinstance(scale, numbers.Real) or isinstance(scale, bool):
    raise ValueError(f"{variant}: scale must be a Python float or None, got {type(scale).__name__}"
                     " (it is a static argument of the compiled function)")
  return float(scale)


def check_inputs(variant: str, query, key, value, bias=None, mask=None, *,
                 query_seq_lengths=None, key_value_seq_lengths=None) -> Dims:
  """Checks ranks, shapes and dtypes against `jax.nn.dot_product_attention`'s contract."""
  for name, x in (("query", query), ("key", key), ("value", value)):
    if np.ndim(x) != 4:
      raise ValueError(f"{variant}: {name} must have rank 4 [B, T|S, N|K, H], "
                       f"got shape {_shape(x)}")
    if jnp.dtype(x.dtype) not in [jnp.dtype(d) for d in FLOAT_DTYPES]:
      raise ValueError(f"{variant}: {name} must be float16, bfloat16 or float32 (float64 "
                       f"with jax_enable_x64), got {x.dtype}")
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
    if _shape(x) != (B,) or not jnp.issubdtype(x.dtype, jnp.integer):
      raise ValueError(f"{variant}: {name} must be an int array of shape [B] = ({B},), got "
                       f"{getattr(x, 'dtype', type(x).__name__)} {_shape(x)}")
  return Dims(B=B, T=T, S=S, N=N, K=K, H=H)


def unsupported(variant: str, **arguments) -> None:
  """Raises for each argument a variant cannot honour (never ignored)."""
  for name, value in arguments.items():
    if value is not None and value is not False:
      raise NotImplementedError(f"{variant} attention does not support {name}")
