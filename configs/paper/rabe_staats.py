"""Rabe & Staats (2021), "Self-attention Does Not Need O(n^2) Memory", Tables 2 and 3.

Memory overhead of standard (`softmax`) and memory-efficient (`chunked`) attention for
n = 2^8 ... 2^20, inference and differentiation, one head, head dim 64, and the relative
speed where standard attention fits and runs in reasonable time (n <= 2^14 here).
Published, at n = 2^14 on one TPUv3 in bf16: inference 1 GB vs 17 MB, differentiation
2.0 GB vs 64 MB; chunked 13% slower for inference, 35% for differentiation.

    python launch.py bench --config configs/paper/rabe_staats.py --workdir runs/rabe_staats

Expected on the 2-core CPU: ~1 minute (measured 70 s: memory of every n is read from
compiled programs; only n <= max_timed_length is run). float32, since bf16 matmuls are
slower on this CPU. Measured at 2^14: 13 MiB inference, 21 MiB differentiation (154x and
240x less than standard), and chunked 2.5x / 9x faster than standard, not slower.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.kind = "rabe_staats"
  c.min_log2, c.max_log2 = 8, 20
  c.max_timed_length = 2**14
  c.head_dim = 64
  c.dtype = "float32"
  # chunked's options: its xla code, whose memory the table measures (XLA's temporaries: a
  # kernel's own buffers are invisible to memory_analysis); chunk sizes may join it
  c.chunked_options = ml_collections.ConfigDict(dict(implementation="xla"))
  c.repeats, c.seconds_per_case = 3, 20.0
  c.memory_fraction = 0.8
  return c.lock()
