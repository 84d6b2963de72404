"""The gated and delta-rule recurrences, chunkwise, against their lax.scan recurrence and
against causal `chunked` and causal `linear`: forward and forward+backward, T = 1K-16K.

    python launch.py bench --config configs/bench/gated.py --workdir runs/bench_gated

Expected on the 2-core CPU: about 10 minutes, most of it the scan recurrences (~8 s per
forward+backward at T=16384). Targets at T=8192, forward+backward: every chunkwise variant
at least 10x faster than its scan recurrence and 3x faster than causal chunked (its xla
code until 2026-12-02, when chunked's CPU default became the faster cpu kernel).
"""

import ml_collections


def get_config(platform: str = "cpu"):
  """`configs/bench/gated.py:gpu`: the GPU check's form (bfloat16, where causal `chunked` is
  cuDNN's kernel; T = 8K, the target's; both chunkwise forms; no scan recurrences, which
  answer the CPU's question)."""
  if platform not in ("cpu", "gpu"):
    raise ValueError(f"configs/bench/gated.py:{platform}: choose cpu or gpu")
  c = ml_collections.ConfigDict()
  c.kind = "recurrence"
  c.variants = ("retention", "gla", "deltanet", "gated_deltanet")  # chunkwise, defaults
  c.scan = True                      # time each one's token-by-token lax.scan too
  c.baselines = ("chunked", "linear")  # causal, default options
  c.lengths = (1024, 2048, 4096, 8192, 16384)
  c.modes = ("forward", "forward_backward")
  c.dtype = "float32"
  c.batch, c.heads, c.head_dim = 1, 8, 64
  c.repeats = 3                      # timed runs after one warm-up ...
  c.seconds_per_case = 10.0          # ... fewer when they would take longer than this
  c.memory_fraction = 0.8            # a case needing more of the free memory is not run
  if platform == "gpu":
    c.scan, c.lengths, c.dtype, c.batch, c.repeats = False, (8192,), "bfloat16", 4, 10
    # Both chunkwise forms, side by side: the default there (parallel) and the CPU's scan.
    c.variants = tuple(f"{name}:chunk_form={form!r}" for name in c.variants
                       for form in ("parallel", "scan"))
  return c.lock()
