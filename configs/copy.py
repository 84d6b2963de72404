"""Copy: reproduce the input sequence (vocabulary 10, lengths 4-32; test_long 33-64).

    python launch.py --config configs/copy.py --workdir runs/copy
    python launch.py --config configs/copy.py --workdir runs/copy_linear \
        --config.model.attention=linear

Expected on the 2-core CPU: ~4 minutes for 2,000 steps with softmax (d=128, 2+2 layers,
batch 32); validation exact-sequence accuracy above 0.95. See the README for measured runs.
"""

from configs import base


def get_config():
  return base.get_config().lock()
