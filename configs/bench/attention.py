"""Every variant against jax.nn.dot_product_attention (and PyTorch's SDPA if installed).

    python launch.py bench --config configs/bench/attention.py --workdir runs/bench

Expected on the 2-core CPU: ~15 minutes, 3 processes of ~5 (one measured 270 s; JAX's own
attention dominates, at 13 s per forward+backward at T=8192); `--config.processes=1` for
one process. Writes table.md, results.csv/json and PNG plots to
the workdir; the README holds the measured table.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.kind = "attention"
  # name[:option=value...]; chunked's default is its fastest implementation here (the cpu
  # kernel on an x86-64 CPU; on a GPU cuDNN in half precision, Pallas in float32), its xla
  # code named beside it
  c.variants = ("chunked", "chunked:implementation='xla'",
                "local:local_window_size=256", "linear")
  c.torch = True                     # time torch SDPA too, when PyTorch is installed (CPU)
  c.lengths = (1024, 2048, 4096, 8192)
  c.causal = (False, True)
  c.modes = ("forward", "forward_backward")
  c.dtype = "float32"
  c.batch, c.heads, c.head_dim = 1, 8, 64
  c.repeats = 5                      # timed runs after one warm-up ...
  c.seconds_per_case = 20.0          # ... fewer when they would take longer than this
  c.memory_fraction = 0.8            # a case needing more of the free memory is not run
  c.processes = 3                    # the grid timed in this many fresh processes, one after
  #                                    another; each case reports its best median
  return c.lock()
