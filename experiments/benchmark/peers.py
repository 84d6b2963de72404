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
  if jax.default_backend() not in ("cpu", "gpu"):
    return f"absent: PyTorch is timed on CPU and GPU only (here {jax.default_backend()})"
  if _torch_device() is None:
    return "absent: this PyTorch sees no GPU (a CPU-only build?)"
  return None


def _torch_device():
  """PyTorch's device on the platform JAX runs on, so both are timed on the same hardware:
  'cpu', 'cuda', or None where this PyTorch cannot reach it."""
  import torch  # optional dependency, imported only when asked for
  if jax.default_backend() == "cpu":
    return "cpu"
  return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else None


def _synchronize(device: str) -> None:
  import torch
  if device == "cuda":
    torch.cuda.synchronize()


def time_torch(shape, dtype: str, is_causal: bool, backward: bool, *, repeats: int,
               seconds: float) -> Measurement:
  """torch.nn.functional.scaled_dot_product_attention on [B, N, T, H] tensors, on the
  platform JAX runs on (its fastest kernel there: flash on CPU, flash or cuDNN on GPU)."""
  import torch  # optional dependency, imported only when asked for
  B, T, N, H = shape
  device = _torch_device()
  q, k, v = (torch.randn(B, N, T, H, dtype=getattr(torch, dtype), device=device,
                         requires_grad=backward) for _ in range(3))

  def run():
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    if backward:
      (out.float() ** 2).sum().backward()

  def once():
    _synchronize(device)
    started = time.perf_counter()
    run()
    _synchronize(device)
    return 1e3 * (time.perf_counter() - started)

  first = once()
  times = [once() for _ in range(timed_runs(first, repeats, seconds))]
  return Measurement(median_ms=statistics.median(times), min_ms=min(times), max_ms=max(times),
                     runs=len(times))


def torch_matmul_peak_gflops(dtype: str = "float32", size: int | None = None,
                             repeats: int = 10) -> float:
  """PyTorch's matmul throughput in this process, as measure.matmul_peak_gflops measures
  JAX's: the best of `repeats` n³ products (n = 2048 on CPU, 8192 on GPU)."""
  import torch
  device = _torch_device()
  size = size or (2048 if device == "cpu" else 8192)
  a = torch.randn(size, size, dtype=getattr(torch, dtype), device=device)
  torch.mm(a, a)
  best = float("inf")
  for _ in range(repeats):
    _synchronize(device)
    started = time.perf_counter()
    torch.mm(a, a)
    _synchronize(device)
    best = min(best, time.perf_counter() - started)
  return 2 * size**3 / best / 1e9


def torch_version() -> str:
  """The installed PyTorch's version, read without importing it (seconds, on every table)."""
  return importlib.metadata.version("torch")

