"""Accuracy against sequence length: softmax and linear attention on copy, lengths 8 to 64.

    python launch.py sweep --config configs/sweeps/lengths.py --workdir runs/lengths

Writes test_exact_accuracy_vs_data.max_length.png (a line per variant, ± std over 2 seeds).
Expected on the 2-core CPU: about 15 minutes, estimated from single runs (12 runs of 1,000
steps), not timed as a whole.
"""

from configs import base


def get_config():
  c = base.for_task("copy", long_max_length=128)
  c.num_train_steps = 1_000
  return base.sweep(c, axes=[
      ("model.attention", ("softmax", "linear")), ("data.max_length", (8, 16, 32)),
      ("seed", (0, 1))], rows=["model.attention"], columns="data.max_length",
                    x_axis="data.max_length")
