"""Long sequences: forward+backward at T = 16K and 64K, where dense attention cannot fit.

    python launch.py bench --config configs/bench/long.py --workdir runs/bench_long

Expected on the 2-core CPU: ~10 minutes (chunked's xla code: ~3 minutes per forward+backward
at T=65536, 8 heads; its default there, the cpu kernel, not yet timed at these lengths);
JAX's own attention is reported as not fitting (it would need ~400 GiB
at T=65536) and is not run.
"""

from configs.bench import attention


def get_config():
  c = attention.get_config().unlock()
  c.lengths, c.causal, c.modes = (16384, 65536), (False,), ("forward_backward",)
  c.torch = False  # PyTorch's kernel runs too; left out to halve the runtime
  c.repeats, c.seconds_per_case = 1, 1.0
  c.processes = 1  # one forward+backward per length, minutes each
  return c.lock()
