"""Functions timed beside the variants: JAX's own attention, and PyTorch's when installed.

PyTorch is optional (`pip install -r requirements-bench.txt`): its CPU flash kernel is the
fastest CPU attention we know of, so it is the bar `chunked` is held to.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import statistics
import time

import jax

from experiments.benchmark.measure import Measurement, timed_runs


def jax_attention(implementation: str):
  def attend(q, k, v, is_causal=False):
    return jax.nn.dot_product_attention(q, k, v, is_causal=is_causal,
                                        implementation=implementation)
  return attend


def baselines() -> dict:
  """`jax` (XLA) everywhere, and `jax-cudnn` where a GPU is present."""
  found = {"jax": jax_attention("xla")}
  if jax.default_backend() == "gpu":
    found["jax-cudnn"] = jax_attention("cudnn")
  return found


def torch_available() -> bool:
  return importlib.util.find_spec("torch") is not None


def torch_absence() -> str | None:
  """Why PyTorch cannot be timed here, as the table's status for its row, or None if it can."""
  if not torch_available():
    return "absent: PyTorch is not installed (pip install -r requirements-bench.txt)"
  if jax.default_backend() != "cpu":
    return f"absent: PyTorch is timed on CPU only (here {jax.default_backend()})"
  return None


def time_torch(shape, dtype: str, is_causal: bool, backward: bool, *, repeats: int,
               seconds: float) -> Measurement:
  """torch.nn.functional.scaled_dot_product_attention on [B, N, T, H] tensors."""
  import torch  # optional dependency, imported only when asked for
  B, T, N, H = shape
  torch_dtype = getattr(torch, dtype)
  q, k, v = (torch.randn(B, N, T, H, dtype=torch_dtype, requires_grad=backward)
             for _ in range(3))

  def run():
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    if backward:
      (out.float() ** 2).sum().backward()

  def once():
    started = time.perf_counter()
    run()
    return 1e3 * (time.perf_counter() - started)

  first = once()
  times = [once() for _ in range(timed_runs(first, repeats, seconds))]
  return Measurement(median_ms=statistics.median(times), min_ms=min(times), max_ms=max(times),
                     runs=len(times))


def torch_matmul_peak_gflops(dtype: str = "float32", size: int = 2048, repeats: int = 10) -> float:
  """PyTorch's matmul throughput in this process, as measure.matmul_peak_gflops measures
  JAX's: the best of `repeats` n³ products."""
  import torch
  a = torch.randn(size, size, dtype=getattr(torch, dtype))
  torch.mm(a, a)
  best = float("inf")
  for _ in range(repeats):
    started = time.perf_counter()
    torch.mm(a, a)
    best = min(best, time.perf_counter() - started)
  return 2 * size**3 / best / 1e9


def torch_version() -> str:
  """The installed PyTorch's version, read without importing it (seconds, on every table)."""
  return importlib.metadata.version("torch")

