"""Sort: output the input in ascending order (vocabulary 10, lengths 4-32; test_long 33-64).

    python launch.py --config configs/sort.py --workdir runs/sort

Expected on the 2-core CPU: ~4 minutes for 2,000 steps with softmax (d=128, 2+2
layers, batch 32). See the README for measured runs.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.data.task = "sort"
  return c.lock()
