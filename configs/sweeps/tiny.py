"""A smoke-test sweep: 2 variants x 2 seeds of a tiny copy model, 30 steps each.

    python launch.py sweep --config configs/sweeps/tiny.py --workdir runs/tiny_sweep

Expected on the 2-core CPU: about a minute (measured 53 s; each run is a fresh process, ~10 s
of start-up and compilation); both variants are far from solving the task in 30 steps
(exact-sequence accuracy 0, test loss ~3.2).
"""

from configs import base


def get_config():
  c = base.for_task("copy", num_train=512, num_eval=64, min_length=2, max_length=8,
                    long_max_length=12, batch_size=16, eval_batch_size=32)
  c.model.update(dict(d_model=32, num_heads=2, d_ff=64, num_encoder_layers=1,
                      num_decoder_layers=1))
  c.model.options.local.local_window_size = 3
  c.update(dict(num_train_steps=30, log_every=5, eval_every=15, checkpoint_every=10,
                eval_batches=1))
  return base.sweep(c, axes=[("model.attention", ("softmax", "linear")), ("seed", (0, 1))],
                    rows=["model.attention"], minutes=1)
