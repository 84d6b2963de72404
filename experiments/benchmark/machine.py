"""What a benchmark ran on, named beside every table: the processor's model (not just its
architecture: an AMD EPYC and an Intel Xeon differ by 2x in the attention benchmark), the
cores this process may use, the device, the frameworks and, for the attention benchmark,
each framework's matmul peak measured in the same run."""

from __future__ import annotations

import os
import platform

import jax

from experiments.benchmark import peers


def processor(cpuinfo: str = "/proc/cpuinfo") -> str:
  """The CPU's model name, family and model numbers and widest vector extension (Linux:
  /proc/cpuinfo), else the architecture. A virtual machine may name only "AMD EPYC": the
  family and model tell its generations apart (family 25 model 17, Zen 4, measured 210
  GFLOP/s of JAX matmul on 2 cores; another "AMD EPYC" gave this project about 440)."""
  try:
    with open(cpuinfo, encoding="utf-8") as f:
      fields = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines()
                    if ":" in line)
  except OSError:
    fields = {}
  fields = {key.strip(): value.strip() for key, value in fields.items()}
  if "model name" not in fields:
    return platform.processor() or platform.machine()
  flags = set(fields.get("flags", "").split())
  vector = next((name for flag, name in (("amx_tile", "AMX"), ("avx512f", "AVX-512"),
                                         ("avx2", "AVX2")) if flag in flags), None)
  details = [f"family {fields['cpu family']} model {fields['model']}"
             if "cpu family" in fields and "model" in fields else None, vector]
  details = ", ".join(d for d in details if d)
  return fields["model name"] + (f" ({details})" if details else "")


def cores() -> int:
  """The cores this process may run on (its affinity, which a container may narrow)."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def describe() -> str:
  """One line: processor, cores, device, frameworks and, where set, XLA's flags (they change
  what is measured: `XLA_FLAGS="--xla_cpu_use_onednn=true" python launch.py bench ...`
  times XLA's oneDNN path, its child processes inheriting the flags)."""
  flags = os.environ.get("XLA_FLAGS", "").strip()
  return (f"{processor()}, {cores()} cores, {jax.devices()[0].device_kind}, JAX {jax.__version__}"
          + (f", PyTorch {peers.torch_version()}" if peers.torch_available() else "")
          + (f", XLA_FLAGS={flags}" if flags else ""))
