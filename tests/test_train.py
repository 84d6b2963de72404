"""The experiment loop end to end: every variant, learning, failures (a kill at every save
instant: tests/test_rundir.py)."""

import os

import numpy as np
import pytest

import attention_zoo
from experiments import metrics, train
from tests import tiny


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.mark.parametrize("variant", attention_zoo.names())
def test_two_steps_per_variant(variant, data_dir, tmp_path):
  """Trains, evaluates, decodes and checkpoints with the variant in every role it takes:
  decoding the longer test split only (decoding is exact per variant: test_decoding.py)."""
  config = tiny.config(variant, data_dir, decode_splits=("test_long",))
  final = train.train_and_evaluate(config, str(tmp_path))
  logged = metrics.read(str(tmp_path))
  assert [r["step"] for r in logged if "train_loss" in r] == [1, 2]
  assert all(np.isfinite(r["train_loss"]) for r in logged if "train_loss" in r)
  assert os.listdir(tmp_path / "checkpoints") and os.listdir(tmp_path / "best")
  assert os.listdir(tmp_path / "tensorboard")
  assert set(final) >= {"test_long_exact_accuracy", "test_long_loss"}, final


def test_softmax_learns_copy(data_dir, tmp_path):
  """The loop learns: the tiny model copies sequences of 2-6 tokens after 400 steps (1.0
  exact on this seed, 0.95 and 1.0 on seeds 1 and 2; ~25 s on 2 CPU cores). The default job's
  accuracies (600 steps of a larger model) are its own measurement: `python launch.py`."""
  config = tiny.config("softmax", data_dir, num_train_steps=400, eval_every=400,
                       checkpoint_every=400, log_every=100, **{
                           "data.num_train": 2000, "data.batch_size": 32,
                           "optimizer.learning_rate": 3e-3, "optimizer.warmup_steps": 20})
  final = train.train_and_evaluate(config, str(tmp_path))
  assert final["test_exact_accuracy"] >= 0.9, final


def test_nan_loss_stops_with_the_step(data_dir, tmp_path):
  config = tiny.config(data_dir=data_dir, **{"optimizer.learning_rate": 1e38,
                                             "optimizer.warmup_steps": 1,
                                             "num_train_steps": 6})
  with pytest.raises(FloatingPointError, match=r"NaN or Inf at step \d"):
    train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.parametrize("override,message", [
    ({"data.task": "copyy"}, r"config.data.task='copyy' is not a task; choose from \('copy'"),
    ({"model.attention": "flash"}, r"is not a variant; choose from \['chunked', 'deltanet'"),
    ({"model.cross_attention": "flash"}, r"config.model.cross_attention='flash'"),
    ({"model.options.chunked.query_chunk_size": 0, "model.attention": "chunked"},
     r"query_chunk_size must be a positive int"),
    ({"data.task": "text"}, r"needs config.data.tfds_name"),
    ({"data.data_dir": "/proc/no/such/dir"}, r"is not a writable directory"),
    ({"data.max_length": 9}, r"max_length < long_max_length"),
    ({"model.num_kv_heads": 3}, r"num_heads=4 is not a multiple of num_kv_heads=3"),
    ({"optimizer.decay": "linear"}, r"choose from \('cosine', 'rsqrt', 'step', 'constant'\)"),
    ({"optimizer.name": "sgd"}, r"config.optimizer.name='sgd'; choose from \('adamw', 'radam'\)"),
    ({"optimizer.decay": "step", "optimizer.drop_at": 5}, r"drop_at=5 must come after"),
    ({"mesh.data": 2}, r"multiply to 2, but there are 1 devices"),
    ({"mesh.data": -1, "mesh.fsdp": -1}, r"at most one axis may be -1"),
    ({"mesh.fsdp": 0}, r"each size must be positive"),
])
def test_bad_configs_fail_before_training(override, message, tmp_path):
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(tiny.config(data_dir=tmp_path / "data", **override),
                             str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")
