"""Copy: reproduce the input sequence (vocabulary 10, lengths 4-32; test_long 33-64).

    python launch.py --config configs/copy.py --workdir runs/copy
    python launch.py --config configs/copy.py --workdir runs/copy_linear \
        --config.model.attention=linear

Expected on the 2-core CPU: ~2 minutes for 2,000 steps with softmax (d=128, 2+2 layers,
batch 32). Measured: 121 s; exact-sequence accuracy 1.000 on test, 0.033 on test_long
(lengths 33-64, longer than any seen in training).
"""

from configs import base


def get_config():
  return base.for_task("copy")
