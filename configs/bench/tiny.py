"""A seconds-long attention benchmark (used by the tests): tiny shapes, every kind of row.

    python launch.py bench --config configs/bench/tiny.py --workdir runs/bench_tiny
"""

from configs.bench import attention


def get_config():
  c = attention.get_config().unlock()
  c.variants = ("chunked:query_chunk_size=16:key_chunk_size=16", "local:local_window_size=4",
                "linear", "softmax")
  c.lengths, c.heads, c.head_dim, c.repeats = (32, 64), 2, 8, 2
  c.processes = 1
  return c.lock()
