"""What a benchmark ran on, named beside every table: the processor's model (not just its
architecture: an AMD EPYC and an Intel Xeon differ by 2x in the attention benchmark), the
cores this process may use, the device, the frameworks and, for the attention benchmark,
each framework's matmul peak measured in the same run."""

from __future__ import annotations

import os
import platform

import jax

from experiments.benchmark import peers


def processor() -> str:
  """The CPU's model name (Linux: /proc/cpuinfo), else the architecture."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def cores() -> int:
  """The cores this process may run on (its affinity, which a container may narrow)."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def describe() -> str:
  """One line: processor, cores, device, frameworks."""
  return (f"{processor()}, {cores()} cores, {jax.devices()[0].device_kind}, JAX {jax.__version__}"
          + (f", PyTorch {peers.torch_version()}" if peers.torch_available() else ""))
