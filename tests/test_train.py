"""The experiment loop end to end: every variant, learning, resume after a kill, failures."""

import os
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import attention_zoo
from configs.sweeps import default
from experiments import children, metrics, train
from tests import tiny

# Timings, and what a (re)started process logs once (compile time, memory, device count).
TIMING = {"steps_per_second", "tokens_per_second", "process_peak_rss_mib", "compile_seconds",
          "train_step_memory_mib", "devices"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.mark.parametrize("variant", attention_zoo.names())
def test_two_steps_per_variant(variant, data_dir, tmp_path):
  final = train.train_and_evaluate(tiny.config(variant, data_dir), str(tmp_path))
  logged = metrics.read(str(tmp_path))
  assert [r["step"] for r in logged if "train_loss" in r] == [1, 2]
  assert all(np.isfinite(r["train_loss"]) for r in logged if "train_loss" in r)
  assert os.listdir(tmp_path / "checkpoints") and os.listdir(tmp_path / "best")
  assert os.listdir(tmp_path / "tensorboard")
  assert set(final) >= {"test_exact_accuracy", "test_long_exact_accuracy", "validation_loss"}


@pytest.mark.slow
def test_softmax_learns_copy(data_dir, tmp_path):
  """The default job's softmax config: 600 steps, ~30 s on 2 CPU cores (measured 99.9%)."""
  config = default.config("softmax")
  config.data.data_dir, config.progress_bar = str(data_dir), False
  final = train.train_and_evaluate(config, str(tmp_path))
  assert final["test_exact_accuracy"] >= 0.9, final


def _kill_after(k, config_overrides, workdir, data_dir):
  """Runs in a child process that SIGKILLs itself once step k's checkpoint is on disk and
  two more steps have run (and been logged, unsaved)."""
  code = f"""
      import os, signal
      from experiments import checkpoints, train
      from tests import tiny
      save = checkpoints.Checkpoints.save
      def save_then_die(self, step, *args, **kwargs):
        save(self, step, *args, **kwargs)
        if step == {k} + 2:
          self.latest.wait_until_finished()
          os.kill(os.getpid(), signal.SIGKILL)
      checkpoints.Checkpoints.save = save_then_die
      train.train_and_evaluate(tiny.config("softmax", {str(data_dir)!r}, **{config_overrides!r}),
                               {str(workdir)!r})
  """
  return children.run(code, timeout=300)


def _params(workdir, step):
  return ocp.PyTreeCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step),
                                                       "state"))["params"]


def _comparable(workdir):
  return [{k: v for k, v in r.items() if k not in TIMING} for r in metrics.read(workdir)]


def test_resume_after_kill_matches_uninterrupted_run(data_dir, tmp_path):
  k = 4
  overrides = {"num_train_steps": 2 * k, "checkpoint_every": k, "eval_every": k,
               "model.dropout_rate": 0.1}
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  train.train_and_evaluate(tiny.config("softmax", data_dir, **overrides), straight)
  child = _kill_after(k, overrides, killed, data_dir)
  assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
  assert sorted(os.listdir(os.path.join(killed, "checkpoints"))) == [str(k)]
  assert max(r["step"] for r in metrics.read(killed)) == k + 2  # logged, then lost
  train.train_and_evaluate(tiny.config("softmax", data_dir, **overrides), killed)
  resumed, uninterrupted = _params(killed, 2 * k), _params(straight, 2 * k)
  assert jax.tree.structure(resumed) == jax.tree.structure(uninterrupted)
  jax.tree.map(np.testing.assert_array_equal, resumed, uninterrupted)
  assert _comparable(killed) == _comparable(straight)


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


def test_launch_rejects_misspelt_fields_and_unknown_variants(tmp_path):
  run = lambda *flags: children.run(argv=[
      "launch.py", "--config", "configs/copy.py", "--workdir", tmp_path, *flags], timeout=120)
  typo = run("--config.model.attentoin=linear")
  assert typo.returncode != 0 and "(did you mean 'attention'?)" in typo.stderr
  unknown = run("--config.model.attention=flash")
  assert unknown.returncode != 0 and "choose from ['chunked', 'deltanet'" in unknown.stderr
  assert not os.path.exists(tmp_path / "checkpoints")
