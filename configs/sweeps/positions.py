"""Length generalisation per position scheme: softmax on copy and reverse, three seeds.

    python launch.py sweep --config configs/sweeps/positions.py --workdir runs/positions

The default job's run (configs/sweeps/default.py: 2+2 layers, d=128, 600 steps, lengths
4-16) with each of model.positions (sinusoidal, learned, rope, alibi, none) on copy and on
reverse, seeds 0-2: 30 runs. The table: exact-sequence accuracy on test (lengths 4-16) and
on test_long (17-24, longer than any sequence seen in training), a column per task, mean ±
std over the seeds. Learned positions keep the default table of model.max_positions rows;
the rows that only test_long reaches are never trained.

Expected on the 2-core CPU: 37 min 41 s measured, the cores shared with another sweep and
tests (about 20 min expected on idle ones). sinusoidal reaches 0.999 on test but 0.05
(copy) and 0.02 (reverse) on test_long; rope 0.91 on test and the most on test_long, 0.15
and 0.17; learned 0.74 and 0.41 on test, 0 on test_long; alibi and none do not learn
either task in 600 steps (<= 0.04 on test): the README's table.
"""

from configs import base
from configs.sweeps import default


def get_config():
  c = default.config("softmax")
  c.decode_splits = ("test", "test_long")  # the table's; validation is not decoded
  c = base.sweep(
      c, axes=[("model.positions", ("sinusoidal", "learned", "rope", "alibi", "none")),
               ("data.task", ("copy", "reverse")), ("seed", (0, 1, 2))],
      rows=["model.positions"], columns="data.task",
      metrics=("test_exact_accuracy", "test_long_exact_accuracy"), minutes=38)
  with c.unlocked():  # how the table shows each metric (experiments/sweeps/report.py)
    c.table.headers = dict(
        test_exact_accuracy="exact-sequence accuracy, test (lengths 4-16)",
        test_long_exact_accuracy="exact-sequence accuracy, test_long (lengths 17-24)")
    c.table.formats = dict(test_exact_accuracy="{:.3f}", test_long_exact_accuracy="{:.3f}")
  return c
