"""Learning-rate schedules and optimizers by name (config.optimizer, configs/base.py).

Every schedule warms up linearly from 0 to the peak rate over `warmup_steps`, then decays
by `decay`; every optimizer clips the gradients' global norm first. An unknown name raises
ValueError listing the valid ones and the closest match, never a silent default.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import optax

from experiments.console import choose


def _cosine(rate, warmup, num_steps, drop_at, drop_factor):
  return optax.cosine_decay_schedule(rate, max(num_steps - warmup, 1))  # to 0 at the last step


def _rsqrt(rate, warmup, num_steps, drop_at, drop_factor):
  w = max(warmup, 1)
  # s counts from the end of warmup; join_schedules also evaluates it during warmup (s < 0)
  return lambda s: rate * jnp.sqrt(w / jnp.maximum(s + w, 1))


def _step(rate, warmup, num_steps, drop_at, drop_factor):
  return optax.piecewise_constant_schedule(rate, {drop_at - warmup: drop_factor})


def _constant(rate, warmup, num_steps, drop_at, drop_factor):
  return optax.constant_schedule(rate)


# name -> (peak rate, warmup steps, train steps, drop_at, drop_factor) -> the schedule after
# warmup, its step counted from the end of warmup.
DECAYS: dict[str, Callable] = {"cosine": _cosine, "rsqrt": _rsqrt, "step": _step,
                               "constant": _constant}


def _adamw(schedule, b1, b2, weight_decay):
  return optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay)


def _radam(schedule, b1, b2, weight_decay):
  return optax.chain(optax.scale_by_radam(b1=b1, b2=b2), optax.add_decayed_weights(weight_decay),
                     optax.scale_by_learning_rate(schedule))


# name -> (schedule, b1, b2, weight_decay) -> the update after clipping.
OPTIMIZERS: dict[str, Callable] = {"adamw": _adamw, "radam": _radam}


def learning_rate_schedule(decay: str, learning_rate: float, warmup_steps: int,
                           num_steps: int, drop_at: int = 0,
                           drop_factor: float = 1.0) -> optax.Schedule:
  """Linear warmup to `learning_rate` over `warmup_steps`, then `decay` (DECAYS)."""
  after = choose(DECAYS, decay, "config.optimizer.decay")(
      learning_rate, warmup_steps, num_steps, drop_at, drop_factor)
  warmup = optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1))
  return optax.join_schedules([warmup, after], [warmup_steps])


def get_optimizer(name: str, schedule: optax.Schedule, *, b1: float, b2: float,
                  weight_decay: float, grad_clip: float) -> optax.GradientTransformation:
  """Global-norm clipping to `grad_clip`, then the optimizer `name` (OPTIMIZERS) with
  decoupled weight decay."""
  update = choose(OPTIMIZERS, name, "config.optimizer.name")(schedule, b1, b2, weight_decay)
  return optax.chain(optax.clip_by_global_norm(grad_clip), update)


def from_config(cfg, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(optimizer, schedule) of a config.optimizer block for a run of `num_steps` steps."""
  schedule = learning_rate_schedule(cfg.decay, cfg.learning_rate, cfg.warmup_steps, num_steps,
                                    cfg.drop_at, cfg.drop_factor)
  return get_optimizer(cfg.name, schedule, b1=cfg.b1, b2=cfg.b2,
                       weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip), schedule


def check(cfg) -> None:
  """Raises ValueError on an unknown name or a step decay that drops during warmup
  (config.optimizer; the numeric ranges are checks.RANGES')."""
  choose(OPTIMIZERS, cfg.name, "config.optimizer.name")
  choose(DECAYS, cfg.decay, "config.optimizer.decay")
  if cfg.decay == "step" and not cfg.warmup_steps <= cfg.drop_at:
    raise ValueError(f"config.optimizer.drop_at={cfg.drop_at} must come after "
                     f"warmup_steps={cfg.warmup_steps}")
