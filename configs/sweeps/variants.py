"""Every variant on the copy task, three seeds each: which attention learns it, at what cost.

    python launch.py sweep --config configs/sweeps/variants.py --workdir runs/variants
    python launch.py sweep --config configs/sweeps/variants.py --workdir runs/variants_reverse \
        --config.base.data.task=reverse

Expected on the 2-core CPU: about 25-30 minutes, estimated from single runs (12 runs of 2,000
steps, 2+2 layers, d=128; configs/copy.py takes 121 s with softmax), not timed as a whole.
"""

from configs import base


def get_config():
  return base.sweep(base.for_task("copy"), axes=[
      ("model.attention", ("softmax", "chunked", "local", "linear")), ("seed", (0, 1, 2))],
                    rows=["model.attention"],
                    metrics=("test_exact_accuracy", "test_long_exact_accuracy", "test_loss"),
                    curves=("train_loss", "validation_loss"))
