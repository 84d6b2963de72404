"""Schedules and optimizers (experiments/optimizer.py): values at key steps, names, wiring."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments import optimizer

RATE, WARMUP, STEPS = 1e-3, 10, 110


def _schedule(decay, **kwargs):
  return optimizer.learning_rate_schedule(decay, RATE, WARMUP, STEPS, **kwargs)


def _config(**overrides):
  c = dict(name="adamw", learning_rate=RATE, warmup_steps=WARMUP, decay="constant", drop_at=0,
           drop_factor=0.1, weight_decay=0.0, b1=0.9, b2=0.98, grad_clip=1.0)
  return ml_collections.ConfigDict({**c, **overrides})


@pytest.mark.parametrize("decay", optimizer.DECAYS)
def test_every_schedule_warms_up_linearly_to_the_peak(decay):
  schedule = _schedule(decay, drop_at=60)
  for step in (0, 5, WARMUP):
    assert float(schedule(step)) == pytest.approx(RATE * step / WARMUP)


def test_schedules_after_warmup():
  np.testing.assert_allclose([float(_schedule("constant")(s)) for s in (11, 60, STEPS)], RATE)
  cosine = _schedule("cosine")
  assert float(cosine(WARMUP + 50)) == pytest.approx(RATE / 2)  # halfway down
  assert float(cosine(STEPS)) == pytest.approx(0.0, abs=1e-12)  # 0 at the last step
  rsqrt = _schedule("rsqrt")
  assert float(rsqrt(WARMUP + 30)) == pytest.approx(RATE * np.sqrt(WARMUP / (30 + WARMUP)))
  step = _schedule("step", drop_at=60, drop_factor=0.1)
  assert float(step(59)) == pytest.approx(RATE)
  assert float(step(60)) == pytest.approx(RATE * 0.1)
  assert float(step(STEPS)) == pytest.approx(RATE * 0.1)


def test_no_warmup_starts_at_the_peak():
  schedule = optimizer.learning_rate_schedule("constant", RATE, 0, STEPS)
  assert float(schedule(0)) == pytest.approx(RATE)


@pytest.mark.parametrize("field,value,message", [
    ("name", "adamww", r"config.optimizer.name='adamww'; choose from \('adamw', 'radam'\) "
                      r"\(did you mean 'adamw'\?\)"),
    ("name", "sgd", r"config.optimizer.name='sgd'; choose from \('adamw', 'radam'\)$"),
    ("decay", "cosin", r"config.optimizer.decay='cosin'; choose from \('cosine', 'rsqrt', "
                       r"'step', 'constant'\) \(did you mean 'cosine'\?\)"),
])
def test_unknown_names_raise_with_the_valid_ones(field, value, message):
  with pytest.raises(ValueError, match=message):
    optimizer.from_config(_config(**{field: value}), STEPS)
  with pytest.raises(ValueError, match=message):
    optimizer.check(_config(**{field: value}))


def test_a_step_decay_cannot_drop_during_warmup():
  with pytest.raises(ValueError, match=r"drop_at=5 must come after warmup_steps=10"):
    optimizer.check(_config(decay="step", drop_at=5))
  optimizer.check(_config(decay="step", drop_at=10))


def _update(cfg, grads, params):
  tx, _ = optimizer.from_config(cfg, STEPS)
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


@pytest.mark.parametrize("name", optimizer.OPTIMIZERS)
def test_gradients_are_clipped_to_the_global_norm_first(name):
  """A gradient of norm 100 clipped at 1e-9 updates as that gradient scaled by 1e-11 by
  hand does (at so small a norm Adam's epsilon makes the scale visible)."""
  params = {"w": jnp.ones(4)}
  big = {"w": jnp.array([60.0, 80.0, 0.0, 0.0])}
  no_clip = _config(name=name, warmup_steps=0, grad_clip=1e9)
  clipped = _update(_config(name=name, warmup_steps=0, grad_clip=1e-9), big, params)
  by_hand = _update(no_clip, {"w": big["w"] * 1e-11}, params)
  np.testing.assert_allclose(clipped["w"], by_hand["w"], rtol=1e-5)
  assert not np.allclose(clipped["w"], _update(no_clip, big, params)["w"], rtol=0.1)


@pytest.mark.parametrize("name", optimizer.OPTIMIZERS)
def test_weight_decay_is_decoupled_and_scaled_by_the_rate(name):
  """With zero gradients, the update is -rate * weight_decay * params (AdamW; RAdam adds
  the decay to its update)."""
  params = {"w": jnp.array([1.0, -2.0, 3.0])}
  zero = {"w": jnp.zeros(3)}
  decayed = _update(_config(name=name, warmup_steps=0, weight_decay=0.5), zero, params)
  np.testing.assert_allclose(decayed["w"], -RATE * 0.5 * params["w"], rtol=1e-6)
  plain = _update(_config(name=name, warmup_steps=0, weight_decay=0.0), zero, params)
  np.testing.assert_allclose(plain["w"], 0.0, atol=1e-12)
