"""How one compiled function is measured: compile time, XLA memory, median time and spread.

A case whose compiled memory exceeds the budget is reported as not fitting, never run.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import psutil


@dataclasses.dataclass
class Measurement:
  compile_seconds: float | None = None
  memory_mib: float | None = None      # XLA temporaries + arguments of the compiled program
  median_ms: float | None = None
  min_ms: float | None = None
  max_ms: float | None = None
  runs: int = 0
  status: str = "ok"                   # ok, does not fit, failed: ...


def memory_budget_bytes(fraction: float = 0.8) -> int:
  """What a case may use: a fraction of the memory available now (the accelerator's own
  where there is one and it reports it, else the host's)."""
  stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
  if stats and "bytes_limit" in stats:
    return int((stats["bytes_limit"] - stats.get("bytes_in_use", 0)) * fraction)
  return int(psutil.virtual_memory().available * fraction)


def measure(fn, args, *, repeats: int, seconds: float, budget_bytes: int) -> Measurement:
  """Compiles fn(*args), checks its memory against the budget, then times it.

  Runs once to warm up, then up to `repeats` times while the total stays under `seconds`
  (at least once): slow cases get fewer repeats rather than an endless benchmark.
  """
  result = Measurement()
  started = time.perf_counter()
  try:
    compiled = jax.jit(fn).lower(*args).compile()
  except Exception as error:  # a case that cannot compile is reported, the rest go on
    return dataclasses.replace(result, status=f"failed: {type(error).__name__}")
  result.compile_seconds = time.perf_counter() - started
  memory = compiled.memory_analysis()
  if memory is not None:
    needed = memory.temp_size_in_bytes + memory.argument_size_in_bytes
    result.memory_mib = needed / 2**20
    if needed > budget_bytes:
      result.status = f"does not fit ({needed / 2**30:.1f} GiB > {budget_bytes / 2**30:.1f} GiB)"
      return result
  try:
    first = _time_once(compiled, args)
    times = [_time_once(compiled, args) for _ in range(timed_runs(first, repeats, seconds))]
  except Exception as error:  # e.g. an allocation the analysis did not foresee
    status = ("does not fit (out of memory when run)" if "RESOURCE_EXHAUSTED" in str(error)
              else f"failed: {type(error).__name__}")
    return dataclasses.replace(result, status=status)
  return dataclasses.replace(result, median_ms=statistics.median(times), min_ms=min(times),
                             max_ms=max(times), runs=len(times))


def time_range(row: dict) -> str:
  """A measurement's median time with its range, "1.2 (1.0-2.5)" (ms), or its status; the
  best of several processes' medians with their range (`medians_ms`)."""
  if not row["median_ms"]:
    return row["status"]
  low, high = ((min(row["medians_ms"]), max(row["medians_ms"])) if row.get("medians_ms")
               else (row["min_ms"], row["max_ms"]))
  return f"{row['median_ms']:.1f} ({low:.1f}-{high:.1f})"


def timed_runs(first_ms: float, repeats: int, seconds: float) -> int:
  """`repeats`, or fewer (at least one) if they would take longer than `seconds`."""
  return max(1, min(repeats, int(1e3 * seconds / first_ms)))


def _time_once(compiled, args) -> float:
  started = time.perf_counter()
  jax.block_until_ready(compiled(*args))
  return 1e3 * (time.perf_counter() - started)


def matmul_peak_gflops(dtype=jnp.float32, size: int | None = None, repeats: int = 10) -> float:
  """The machine's matmul throughput in this process: the best of `repeats` n³ products
  (n = 2048 on CPU; 8192 on an accelerator, where a smaller product is launch-bound)."""
  size = size or (2048 if jax.default_backend() == "cpu" else 8192)
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  matmul = jax.jit(lambda a, b: a @ b).lower(a, a).compile()
  jax.block_until_ready(matmul(a, a))
  best = min(_time_once(matmul, (a, a)) for _ in range(repeats))
  return 2 * size**3 / best / 1e6
