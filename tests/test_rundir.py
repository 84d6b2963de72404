"""The run directory survives what happens to runs: a kill at any instant (every save
included), a torn or broken metrics.jsonl, a corrupted checkpoint, a second process, a
re-run of a finished run; and configs that cannot make sense or cannot fit fail up front.

Training runs are subprocesses sharing one data directory and one persistent compilation
cache (XLA's programs are the same in every run, so each run after the first skips most of
its compilation); AZ_KILL_AT=<point>:<step> kills a run with SIGKILL at a named point.
"""

import glob
import importlib
import inspect
import json
import os
import shutil
import signal

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

import attention_zoo
from configs import base
from experiments import checks, children, data, footprint, metrics, rundir, sweeps, train
from experiments.sweeps import grid, report
from tests import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# eval_every == checkpoint_every (the default's pattern): best and latest save the same steps.
RUN = {"num_train_steps": 8, "eval_every": 2, "checkpoint_every": 2, "log_every": 1,
       "model.dropout_rate": 0.1, "decode_splits": ("test",)}
# Timings, and what a (re)started process logs once.
TIMING = {"steps_per_second", "tokens_per_second", "process_peak_rss_mib", "compile_seconds",
          "train_step_memory_mib", "devices"}
TRAIN = """
import json
from experiments import train
from tests import tiny
print(json.dumps(train.train_and_evaluate(tiny.config("softmax", {data_dir!r}, **{overrides!r}),
                                          {workdir!r})))
"""


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
  """(data directory, environment) for every run here: the suite's, whose persistent
  compilation cache (tests/conftest.py) the runs share, without a kill point."""
  root = tmp_path_factory.mktemp("rundir")
  env = dict(os.environ)
  env.pop(rundir.KILL_AT, None)
  return root / "tfds", env


def _train(shared, workdir, kill_at=None, **overrides):
  """One run in a fresh process (killed at `kill_at`, a `point:step`, if given)."""
  data_dir, env = shared
  code = TRAIN.format(data_dir=str(data_dir), workdir=str(workdir),
                      overrides={**RUN, **overrides})
  return children.run(code, env={**env, rundir.KILL_AT: kill_at}, timeout=300)


def _finished(process):
  assert process.returncode == 0, process.stderr[-3000:]
  return process.last_json()


@pytest.fixture(scope="module")
def straight(shared, tmp_path_factory):
  """An uninterrupted run: (its workdir, its final metrics)."""
  workdir = tmp_path_factory.mktemp("straight") / "run"
  return workdir, _finished(_train(shared, workdir))


def _comparable(workdir):
  return [{k: v for k, v in r.items() if k not in TIMING} for r in metrics.read(str(workdir))]


def _params(workdir, step):
  return ocp.PyTreeCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step),
                                                       "state"))["params"]


def _assert_same_run(workdir, straight):
  reference, _ = straight
  assert _comparable(workdir) == _comparable(reference)
  assert [r["step"] for r in metrics.read(str(workdir)) if r.get("final")] == [8]
  jax.tree.map(np.testing.assert_array_equal, _params(workdir, 8), _params(reference, 8))
  assert sorted(os.listdir(workdir / "best")) == sorted(os.listdir(reference / "best"))


# Each kill resumes from what the one before left. mid_*_save: orbax is still writing.
KILLS = [
    ("after_best_save:4", "best/4 saved, checkpoints/4 not"),
    ("mid_latest_save:6", "checkpoint 6 half written"),
    ("mid_metrics_write:7", "a torn last line"),
    ("before_final_write:8", "decoded, the final record not written"),
    ("after_final_write:8", "the final record written, final_metrics.json not"),
]


@pytest.mark.slow
def test_resume_after_a_kill_at_every_save_instant(shared, straight, tmp_path, capsys):
  """SIGKILLed at each point in turn, re-run each time: the same run as one never killed.
  (before_best_save and before_metrics_write fall between saves: see the sweep test.)"""
  workdir = tmp_path / "run"
  said = []
  for kill_at, what in KILLS:
    process = _train(shared, workdir, kill_at)
    assert process.returncode == -signal.SIGKILL, (kill_at, what, process.stderr[-3000:])
    said.append(process.stderr)
    if kill_at == "after_best_save:4":
      assert "4" in os.listdir(workdir / "best")
      assert "4" not in os.listdir(workdir / "checkpoints"), what
    if kill_at == "mid_metrics_write:7":
      assert not (workdir / "metrics.jsonl").read_text().endswith("\n"), what
  assert not (workdir / "final_metrics.json").exists()
  assert train.train_and_evaluate(tiny.config("softmax", shared[0], **RUN),
                                  str(workdir)) == straight[1]
  assert "already finished at step 8" in capsys.readouterr().err  # the final record was written
  assert json.loads((workdir / "final_metrics.json").read_text()) == straight[1]
  assert any("dropped its last line, cut short by a kill" in s for s in said)
  _assert_same_run(workdir, straight)


@pytest.mark.slow
def test_a_finished_run_changes_nothing_unless_asked_to_reevaluate(shared, straight, tmp_path,
                                                                    capsys):
  workdir = tmp_path / "run"
  shutil.copytree(straight[0], workdir)
  files = lambda: {p: open(p, "rb").read() for p in glob.glob(f"{workdir}/**", recursive=True)
                   if os.path.isfile(p)}  # .lock (hidden) holds the latest holder's pid
  before = files()
  assert train.train_and_evaluate(tiny.config("softmax", shared[0], **RUN),
                                  str(workdir)) == straight[1]
  said = capsys.readouterr().err
  assert "already finished at step 8" in said and "--config.reevaluate=True" in said
  assert files() == before
  reevaluated = _train(shared, workdir, reevaluate=True)
  assert _finished(reevaluated) == straight[1]
  assert "re-evaluating" in reevaluated.stderr
  _assert_same_run(workdir, straight)  # one final record, replaced


def _unfinished(straight, workdir):
  """The straight run as a kill before its final record leaves it."""
  shutil.copytree(straight[0], workdir)
  records = [r for r in metrics.read(str(workdir)) if not r.get("final")]
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  os.remove(workdir / "final_metrics.json")


CORRUPTIONS = {
    "a deleted file": lambda d: os.remove(d / "state" / "manifest.ocdbt"),
    "truncated files": lambda d: [open(f, "w").close() for f in glob.glob(f"{d}/state/**/d/*",
                                                                          recursive=True)],
}


@pytest.mark.slow
@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_a_corrupted_checkpoint_falls_back_to_the_newest_readable(corruption, shared, straight,
                                                                  tmp_path):
  workdir = tmp_path / "run"
  _unfinished(straight, workdir)
  CORRUPTIONS[corruption](workdir / "checkpoints" / "8")
  resumed = _train(shared, workdir)
  assert _finished(resumed) == straight[1]
  assert "checkpoint 8 is unreadable" in resumed.stderr, resumed.stderr[-3000:]
  assert "resuming from step 6" in resumed.stderr
  assert os.listdir(workdir / "checkpoints.unreadable") == ["8"]  # kept for inspection
  _assert_same_run(workdir, straight)


def test_no_readable_checkpoint_fails_naming_each(shared, straight, tmp_path):
  workdir = tmp_path / "run"
  _unfinished(straight, workdir)
  shutil.rmtree(workdir / "checkpoints" / "6" / "state")  # a deleted item
  os.remove(workdir / "checkpoints" / "8" / "data" / "process_0-of-1.json")  # a deleted file
  with pytest.raises(RuntimeError, match="no checkpoint can be read") as failure:
    train.train_and_evaluate(tiny.config("softmax", shared[0], **RUN), str(workdir))
  assert f"{workdir}/checkpoints/6: KeyError: 'Item \"state\" was not found" in str(failure.value)
  assert (f"{workdir}/checkpoints/8: ValueError: File {workdir}/checkpoints/8/data/"
          f"process_0-of-1.json does not exist") in str(failure.value)


def test_metrics_jsonl_torn_tail_is_dropped_and_garbage_is_named(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
  assert metrics.read(str(tmp_path)) == [{"step": 1, "loss": 2.0}]
  assert metrics.parse(str(path)) == ([{"step": 1, "loss": 2.0}], '{"step": 2, "lo')
  path.write_text('{"step": 1}\n{"step": 2}')  # whole, only its newline missing: kept
  assert metrics.read(str(tmp_path)) == [{"step": 1}, {"step": 2}]
  for broken, line in (('{"step": 1}\nnot json\n{"step": 3}\n', 2),
                       ('{"step": 1}\n{"step": 2, "lo\n', 2), ('[1, 2]\n{"step": 2}\n', 1)):
    path.write_text(broken)
    with pytest.raises(ValueError, match=rf"{path} line {line} "):
      metrics.read(str(tmp_path))


def test_metrics_load_no_pytorch(tmp_path):
  """tensorboardX imports PyTorch where it is installed: metrics.py hides it. A stand-in
  torch that fails when imported shows that nothing loads it, with or without PyTorch."""
  (tmp_path / "torch").mkdir()
  (tmp_path / "torch" / "__init__.py").write_text("raise RuntimeError('torch was imported')")
  (tmp_path / "run").mkdir()
  child = children.run(f"""
      import sys
      from experiments import metrics
      writer = metrics.MetricsWriter({str(tmp_path / "run")!r}, 0)
      writer.write(1, {{"loss": 1.5}})
      writer.close()
      assert "torch" not in sys.modules
  """, env={"PYTHONPATH": str(tmp_path)})
  assert child.returncode == 0, child.stderr[-2000:]
  assert metrics.read(str(tmp_path / "run")) == [{"step": 1, "loss": 1.5}]
  assert os.listdir(tmp_path / "run" / "tensorboard")


def test_a_broken_metrics_line_fails_the_run_naming_it(straight, tmp_path):
  workdir = tmp_path / "run"
  _unfinished(straight, workdir)
  lines = (workdir / "metrics.jsonl").read_text().splitlines(keepends=True)
  lines[2] = "garbage\n"
  (workdir / "metrics.jsonl").write_text("".join(lines))
  with pytest.raises(ValueError, match=rf"{workdir}/metrics.jsonl line 3 is not JSON"):
    train.train_and_evaluate(tiny.config("softmax", tmp_path / "tfds", **RUN), str(workdir))
  assert not (tmp_path / "tfds").exists()  # before any data is built


def test_a_second_process_is_refused_while_the_first_lives(tmp_path, shared):
  workdir = tmp_path / "run"
  os.makedirs(workdir)
  holder = children.start(f"""
      import time
      from experiments import rundir
      with rundir.hold({str(workdir)!r}):
        print("held", flush=True)
        time.sleep(120)
  """)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(rundir.WorkdirInUse, match=rf"in use by process {holder.pid} on "):
      train.train_and_evaluate(tiny.config("softmax", shared[0], **RUN), str(workdir))
    assert os.listdir(workdir) == [".lock"]  # nothing written
  finally:
    holder.kill()  # SIGKILL: no clean-up runs, the kernel drops the lock
    holder.wait()
  with rundir.hold(str(workdir)):  # not stuck
    pass
  with rundir.hold(str(workdir), process_index=1):  # several hosts: a lock per process
    with rundir.hold(str(workdir)):
      pass


@pytest.mark.parametrize("override,message", [
    ({"model.num_heads": 0}, r"config.model.num_heads=0 is out of range: it must be a positive"),
    ({"model.d_model": 0}, r"config.model.d_model=0 is out of range"),
    ({"model.d_model": 33, "model.num_heads": 3, "model.num_kv_heads": 1},
     r"config.model.d_model=33 must be even"),
    ({"optimizer.learning_rate": -1e-3}, r"config.optimizer.learning_rate=-0.001 is out of"),
    ({"optimizer.learning_rate": float("nan")}, r"learning_rate=nan is out of range"),
    ({"model.dropout_rate": 1.5}, r"config.model.dropout_rate=1.5 .* in \[0, 1\)"),
    ({"optimizer.warmup_steps": -1}, r"config.optimizer.warmup_steps=-1 is out of range"),
    ({"optimizer.b2": 1.0}, r"config.optimizer.b2=1.0"),
    ({"model.num_kv_heads": 0}, r"config.model.num_kv_heads=0"),
    ({"eval_batches": 0}, r"config.eval_batches=0"),
    ({"data.num_train": 0}, r"config.data.num_train=0"),
    ({"model.options.chunked.query_chunk_size": 0},  # chunked is not the selected variant
     r"config.model.options.chunked: .*query_chunk_size must be a positive int"),
    ({"model.options.linear.feature_map": "tanh"}, r"config.model.options.linear: "),
])
def test_configs_that_cannot_make_sense_fail_up_front(override, message, tmp_path):
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(tiny.config(data_dir=tmp_path / "data", **override),
                             str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_a_run_re_launched_under_an_edited_config_is_refused(tmp_path):
  """Resuming it would train one experiment's checkpoint under another's name. What only
  changes how it runs (mesh, steps, evaluation, kernels' block sizes) may change."""
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text(tiny.config(data_dir=tmp_path).to_json_best_effort())
  allowed = {"num_train_steps": 7, "beam_size": 2, "mesh.data": 1, "data.data_dir": "/elsewhere",
             "model.options.chunked.query_chunk_size": 64}
  assert rundir.config_changes(str(run), tiny.config(data_dir=tmp_path, **allowed)) == []
  edited = tiny.config(data_dir=tmp_path, **{**allowed, "model.d_model": 48,
                                             "model.options.linear.num_features": 8})
  with pytest.raises(ValueError, match=r"run holds a run begun with another config \("
                                       r"model.d_model: 32 there, 48 now; "
                                       r"model.options.linear.num_features: 256 there, 8 now\)"):
    train.train_and_evaluate(edited, str(run))
  assert sorted(os.listdir(run)) == ["config.json"]  # nothing ran, nothing written


def _numeric_fields(config, prefix=""):
  for key, value in config.items():
    name = prefix + key
    if isinstance(value, ml_collections.ConfigDict):
      if name != "model.options":  # the registry checks those (attention_zoo.get)
        yield from _numeric_fields(value, name + ".")
    elif isinstance(value, (int, float)) and not isinstance(value, bool) or (
        config.get_type(key) in (int, float)):
      yield name


def test_every_numeric_field_has_a_range():
  fields = set(_numeric_fields(base.get_config()))
  mesh = {"mesh.data", "mesh.fsdp", "mesh.sequence"}  # parallel.mesh_shape, with the devices
  assert fields - mesh == set(checks.RANGES), fields ^ set(checks.RANGES)
  checks.check_config(base.get_config())  # the defaults pass, every variant's options too
  for name in attention_zoo.names():
    attention_zoo.get(name, **base.variant_options()[name])


@pytest.mark.parametrize("axis,message", [
    (("mesh.data", (1, 3)), r"sweep run \{'mesh.data': '3'.*multiply to 3, but there are 1 "),
    (("optimizer.learning_rate", (1e-3, -1.0)),
     r"sweep run \{'optimizer.learning_rate': '-1.0'.*out of range"),
    (("data.batch_size", (16, 12)), r"sweep run \{'data.batch_size': '12'.*divide evenly"),
])
def test_a_sweep_checks_every_run_up_front(axis, message, tmp_path):
  sweep = base.sweep(tiny.config(data_dir=tmp_path / "tfds"), axes=[axis, ("seed", (0,))],
                     rows=[axis[0]])
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
  if axis[0] == "data.batch_size":
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  with pytest.MonkeyPatch.context() as patch:
    for k, v in env.items():
      patch.setenv(k, v)
    with pytest.raises(ValueError, match=message):
      sweeps.run(sweep, str(tmp_path / "sweep"))
  assert not os.path.exists(tmp_path / "sweep")


def test_a_model_that_cannot_fit_is_refused_before_the_data_is_built(tmp_path, monkeypatch):
  def build(_):
    raise AssertionError("the data was built")
  monkeypatch.setattr(data, "load_task", build)
  config = tiny.config(data_dir=tmp_path / "data", **{
      "model.d_model": 16384, "model.d_ff": 65536, "model.num_heads": 16,
      "model.num_kv_heads": None, "model.num_encoder_layers": 4, "model.num_decoder_layers": 4})
  with pytest.raises(ValueError, match=r"does not fit: a train step needs at least ~\d+\.\d "
                                       r"GiB per device \(parameters .* GiB"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")
  with pytest.raises(ValueError, match=r"but a test device allows 1.0 GiB per device"):
    footprint.check_fits(tiny.config(**{"data.batch_size": 2**16}),
                         dict(data=1, fsdp=1, sequence=1), (2**30, "a test device"))


def _experiments_in_configs():
  """Every experiment in configs/: plain configs and each run of each sweep."""
  for path in sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True)):
    module = importlib.import_module(os.path.relpath(path, REPO)[:-3].replace(os.sep, "."))
    if not hasattr(module, "get_config"):
      continue
    scales = (("paper",), ("reduced",)) if "scale" in inspect.signature(
        module.get_config).parameters else ((),)
    for scale in scales:
      config = module.get_config(*scale)
      if "axes" in config:
        for run in grid.expand(config):
          yield f"{path}{scale}:{run.name}", run.config
      elif "model" in config and "data" in config:
        yield f"{path}{scale}", config


def test_every_config_in_configs_fits_a_24_gib_device():
  one_device = dict(data=1, fsdp=1, sequence=1)
  sizes = {name: footprint.estimate(c, one_device)["total"] / 2**30
           for name, c in _experiments_in_configs()}
  assert len(sizes) > 40 and max(sizes.values()) < 24, max(sizes.items(), key=lambda x: x[1])


@pytest.mark.slow
def test_a_sweep_survives_a_broken_run_and_names_the_signal_of_a_killed_one(shared, tmp_path,
                                                                           monkeypatch):
  """One run's metrics.jsonl is broken, the other run is SIGKILLed: both are recorded as
  failed with their reasons, and the sweep and its table finish."""
  sweep = base.sweep(tiny.config("softmax", shared[0], **RUN), axes=[("seed", (0, 1))],
                     rows=["seed"], over=None)
  workdir = tmp_path / "sweep"
  os.makedirs(workdir / "seed=0")
  (workdir / "seed=0" / "metrics.jsonl").write_text('{"step": 1}\n{"step": \n{"step": 3}\n')
  for key, value in shared[1].items():
    monkeypatch.setenv(key, value)
  monkeypatch.setenv(rundir.KILL_AT, "before_metrics_write:1")  # every run's process dies
  text = sweeps.run(sweep, str(workdir))
  results = {r["name"]: r for r in json.loads((workdir / "results.json").read_text())}
  assert results["seed=0"]["status"] == "failed"
  assert f"{workdir}/seed=0/metrics.jsonl line 2 is not JSON" in results["seed=0"]["error"]
  assert results["seed=1"]["status"] == "failed"
  assert results["seed=1"]["error"] == "the run's process was killed by SIGKILL"
  assert "2 of 2 runs failed" in text
  assert "Left out, its metrics unreadable: seed=0" in report.write(str(workdir))
