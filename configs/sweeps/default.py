"""The default job: every variant on the copy task, ending with one comparison table.

    python launch.py                       # this sweep, in runs/default
    python launch.py sweep --config configs/sweeps/default.py --workdir runs/default  # the same

Each variant takes every attention role it can (configs.base.attention_fields): a 2+2-layer
Transformer (d=128) trained for 600 steps on copy (lengths 4-16; test_long 17-24), one run
per variant, each in its own process. The table: exact-sequence accuracy on test and
test_long, test loss, steps/s and tokens/s (the mean over the logged intervals after the
first) and XLA's memory of one compiled train step.

Expected on the 2-core CPU: 16 minutes for the 9 variants, measured on shared cores when
they ran in one process (about 5 expected on idle ones; each run's own process adds ~10 s
of start-up); softmax, chunked, local, ring and the recurrences reach >= 99.8%
exact-sequence accuracy on test, linear 78% (the README's table).
"""

import attention_zoo
from configs import base, copy

WORKDIR = "runs/default"  # where `python launch.py` puts it


def config(variant: str = "softmax"):
  """One run of the job: `variant` on copy, small enough for a few minutes per variant on
  2 CPU cores."""
  c = base.override(copy.get_config(), base.attention_fields(variant))
  c.data.max_length, c.data.long_max_length, c.data.num_train = 16, 24, 10_000
  c.num_train_steps, c.eval_every, c.checkpoint_every, c.log_every = 600, 300, 300, 100
  c.optimizer.warmup_steps = 50
  return c


def get_config():
  variants = {name: base.attention_fields(name) for name in attention_zoo.names()}
  c = base.sweep(config(), axes=[("variant", variants)], rows=["variant"], over=None,
                 metrics=("test_exact_accuracy", "test_long_exact_accuracy", "test_loss",
                          "steps_per_second", "tokens_per_second", "train_step_memory_mib"),
                 minutes=16)
  with c.unlocked():  # how the table shows each metric (experiments/sweeps/report.py)
    c.table.headers = dict(
        test_exact_accuracy="exact-sequence accuracy (test)",
        test_long_exact_accuracy="exact (test_long)", test_loss="test loss",
        steps_per_second="steps/s", tokens_per_second="tokens/s",
        train_step_memory_mib="peak memory of a train step")
    c.table.formats = dict(
        test_exact_accuracy="{:.3f}", test_long_exact_accuracy="{:.3f}", test_loss="{:.4f}",
        steps_per_second="{:.1f}", tokens_per_second="{:,.0f}",
        train_step_memory_mib="{:.1f} MiB")
  return c
