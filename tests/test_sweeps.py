"""Sweeps end to end: a grid runs, survives a kill, records failures, and ends in a table."""

import json
import os
import subprocess
import time

import psutil
import pytest

import attention_zoo
from configs import base
from configs.sweeps import default, tiny
from experiments import children, console, metrics, sweeps
from experiments.sweeps import grid, report, runner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_sweep(data_dir, axes=None, steps=20):
  sweep = tiny.get_config()
  with sweep.unlocked():
    if axes is not None:
      sweep.axes = tuple(axes)
      sweep.table.rows = tuple(a for a, _ in axes if a != "seed")
  sweep.base.data.data_dir = str(data_dir)
  sweep.base.num_train_steps = steps
  sweep.base.decode_splits = ("test",)  # the table's; decoding the others is compile time only
  return sweep


def _wait_for(condition, timeout=240):
  deadline = time.time() + timeout
  while not condition():
    assert time.time() < deadline, "timed out"
    time.sleep(0.2)


def _steps(run_dir):
  return [r["step"] for r in metrics.read(run_dir)]


SOFTMAX_TWO_SEEDS = """
from configs import base
from configs.sweeps import tiny


def get_config():
  runs = tiny.get_config().base
  runs.decode_splits = ("test",)  # the table's; decoding the others is compile time only
  return base.sweep(runs, axes=[("model.attention", ("softmax",)), ("seed", (0, 1))],
                    rows=["model.attention"])
"""


@pytest.mark.slow
def test_tiny_sweep_survives_a_kill_and_ends_in_a_table(tmp_path):
  """The tiny sweep cut to 2 seeds of softmax: SIGKILL it during its second run, re-launch,
  finish."""
  workdir, data_dir = tmp_path / "sweep", tmp_path / "tfds"
  config = tmp_path / "sweep_config.py"  # launch.py loads it as it loads configs/sweeps/*
  config.write_text(SOFTMAX_TWO_SEEDS)
  command = ["launch.py", "sweep", "--config", str(config), f"--workdir={workdir}",
             f"--config.base.data.data_dir={data_dir}", "--config.base.num_train_steps=20"]
  first, second = (workdir / name for name in ("attention=softmax,seed=0",
                                                "attention=softmax,seed=1"))
  launcher = children.start(argv=command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  _wait_for(lambda: (second / "checkpoints" / "10").is_dir()  # its checkpoint, committed
            and max(_steps(second), default=0) >= 15)
  descendants = psutil.Process(launcher.pid).children(recursive=True)
  launcher.kill()
  launcher.wait()
  psutil.wait_procs(descendants, timeout=20)  # the run's process dies with the sweep's
  assert not [c for c in descendants if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
  finished_first = (first / "metrics.jsonl").read_bytes()
  assert metrics.final(metrics.read(str(first)))
  assert metrics.final(metrics.read(str(second))) is None

  done = children.run(argv=command, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert (first / "metrics.jsonl").read_bytes() == finished_first  # not redone
  started = [r["step"] for r in metrics.read(str(second)) if "compile_seconds" in r]
  assert started[0] == 5 and started[1] > 10, started  # resumed from its checkpoint
  results = json.loads((workdir / "results.json").read_text())
  assert [r["status"] for r in results] == ["finished"] * 2
  assert {r["name"] for r in results} == {f"attention=softmax,seed={s}" for s in (0, 1)}
  table = (workdir / "table.md").read_text()
  assert "| softmax | " in table and " ± " in table
  assert table in done.stdout
  assert (workdir / "curves.png").stat().st_size > 0
  assert len((workdir / "table.csv").read_text().splitlines()) == 1 + 2


@pytest.mark.slow
def test_a_failing_run_is_recorded_and_the_others_finish(tmp_path):
  sweep = _tiny_sweep(tmp_path / "tfds", steps=6, axes=[
      ("optimizer.learning_rate", (1e-3, 1e38)), ("seed", (0,))])
  with sweep.unlocked():
    sweep.base.optimizer.warmup_steps, sweep.base.log_every = 1, 1
  workdir = str(tmp_path / "sweep")
  text = sweeps.run(sweep, workdir)
  results = {r["name"]: r for r in json.load(open(os.path.join(workdir, "results.json")))}
  assert results["learning_rate=0.001,seed=0"]["status"] == "finished"
  failed = results["learning_rate=1e+38,seed=0"]
  assert failed["status"] == "failed" and "NaN or Inf at step" in failed["error"], failed
  assert "| 1e+38 | failed | failed |" in text and "1 of 2 runs failed" in text
  started = time.time()
  sweeps.run(sweep, workdir)  # re-launch: nothing left to do, the failure is kept
  assert time.time() - started < 10
  assert os.path.exists(os.path.join(workdir, "learning_rate=1e+38,seed=0", "failure.json"))

  # Another sweep with the same configs reuses the finished run (copied, not trained: the
  # same metrics) and not the failed one.
  other = str(tmp_path / "other")
  with sweep.unlocked():
    sweep.reuse = (workdir, str(tmp_path / "absent"))
  copied = runner.reuse(sweep, other, grid.expand(sweep))
  first = "learning_rate=0.001,seed=0"
  assert copied == {first: os.path.join(workdir, first)}
  for name in ("metrics.jsonl", "config.json"):
    assert (open(os.path.join(other, first, name)).read()
            == open(os.path.join(workdir, first, name)).read())
  assert not os.path.exists(os.path.join(other, "learning_rate=1e+38,seed=0"))
  assert runner.reuse(sweep, other, grid.expand(sweep)) == {}  # begun here: left alone


def test_runs_begun_under_another_config_stop_the_sweep_before_anything_runs(tmp_path):
  """Editing a sweep's config and re-launching it in the same workdir would otherwise keep
  (or resume) the old runs under the new config's name."""
  sweep = _tiny_sweep(tmp_path / "tfds", axes=[("seed", (0, 1))])
  runs = grid.expand(sweep)
  workdir = tmp_path / "sweep"
  for run in runs:
    os.makedirs(workdir / run.name)
    (workdir / run.name / "config.json").write_text(run.config.to_json_best_effort())
  runner.check_begun_runs(str(workdir), runs)  # the same configs: resumed as they are
  added = json.loads(runs[0].config.to_json_best_effort())
  added["data"]["field_added_since"] = 1  # the code's evolution, not an edit: not compared
  (workdir / runs[0].name / "config.json").write_text(json.dumps(added))
  runner.check_begun_runs(str(workdir), runs)
  with sweep.unlocked():
    sweep.base.model.d_model, sweep.base.optimizer.learning_rate = 48, 0.5
  with pytest.raises(console.ConfigError, match=(
      r"2 run\(s\) of this sweep were begun in .* with another config; .*seed=0 \("
      r"model.d_model: 32 there, 48 now; optimizer.learning_rate: .* there, 0.5 now\)")):
    sweeps.run(sweep, str(workdir))
  assert sorted(os.listdir(workdir)) == ["seed=0", "seed=1"]  # nothing ran, nothing written


def test_grid_names_runs_by_their_overrides():
  sweep = base.sweep(base.for_task("copy"), axes=[
      ("variant", {"Performer": {"model.attention": "linear",
                                 "model.options.linear.feature_map": "favor"},
                   "Local": {"model.attention": "local"}}),
      ("model.options.local.local_window_size", (4, 8)), ("seed", (0, 1))],
                     rows=["variant", "model.options.local.local_window_size"])
  runs = grid.expand(sweep)
  # every cell's seed 0 first (a sweep cut short has a whole table at one seed)
  assert [r.name for r in runs][:3] == ["variant=Performer,local_window_size=4,seed=0",
                                        "variant=Performer,local_window_size=8,seed=0",
                                        "variant=Local,local_window_size=4,seed=0"]
  assert [r.name for r in runs][4] == "variant=Performer,local_window_size=4,seed=1"
  assert runs[0].config.model.options.linear.feature_map == "favor"
  assert runs[0].config.model.options.local.local_window_size == 4
  assert grid.label((4, 0)) == "4-0" and grid.label("a/b c") == "a-b-c"
  assert sweep.base.model.attention == "softmax"  # the base is not modified
  assert grid.short_names(["a.x", "b.x", "seed"]) == {"a.x": "a.x", "b.x": "b.x", "seed": "seed"}


@pytest.mark.parametrize("axes,rows,message", [
    ([("model.atention", ("softmax",))], ["model.atention"], r"atention.*Did you mean"),
    ([("seed", ("zero",))], [], r"Could not override field 'seed'"),
    ([("model.attention", ("flash",))], ["model.attention"], r"'flash' is not a variant"),
    ([("seed", (0, 0))], [], r"distinct"),
    ([("seed", 3)], [], r"must be a tuple or a dict"),
    ([("model.attention", ("softmax",)), ("seed", (0,))], [], r"must name each axis"),
])
def test_bad_sweeps_fail_before_running(axes, rows, message, tmp_path):
  sweep = base.sweep(base.for_task("copy"), axes=axes, rows=rows)
  with pytest.raises(ValueError, match=message):
    sweeps.run(sweep, str(tmp_path))
  assert not os.listdir(tmp_path)


def _fake_sweep(workdir, finals, curves=None, x_metric=None):
  """A finished sweep on disk: {(variant, length, seed): test_exact_accuracy} (and, given
  `x_metric`, that final metric, the length times 10, to plot against)."""
  runs = []
  for (variant, length, seed), value in finals.items():
    name = f"attention={variant},max_length={length},seed={seed}"
    os.makedirs(os.path.join(workdir, name))
    records = [{"step": s, "train_loss": l} for s, l in (curves or {}).get(seed, [])]
    records.append({"step": 10, "final": True, "test_exact_accuracy": value,
                    **({x_metric: 10.0 * length} if x_metric else {})})
    with open(os.path.join(workdir, name, "metrics.jsonl"), "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in records)
    runs.append(dict(name=name, labels={"model.attention": variant, "data.max_length": str(length),
                                        "seed": str(seed)}, overrides={}))
  table = dict(rows=["model.attention"], columns="data.max_length", over="seed",
               metrics=["test_exact_accuracy"], curves=["train_loss"], x_axis="data.max_length",
               published=dict(source="A et al.", metric="test_exact_accuracy", scale=100,
                              values={"softmax": 50.0}), x_metric=x_metric)
  with open(os.path.join(workdir, "sweep.json"), "w") as f:
    json.dump(dict(table=table, runs=runs), f)


def test_table_is_mean_and_std_over_seeds(tmp_path):
  _fake_sweep(str(tmp_path), {("softmax", 8, 0): 0.5, ("softmax", 8, 1): 0.7,
                              ("softmax", 16, 0): 0.25, ("softmax", 16, 1): 0.25,
                              ("linear", 8, 0): 0.1, ("linear", 8, 1): 0.3,
                              ("linear", 16, 0): 0.0, ("linear", 16, 1): 0.2},
              curves={0: [(5, 2.0), (10, 1.0)], 1: [(5, 4.0), (10, 3.0)]})
  text = report.write(str(tmp_path))
  # mean 0.6, sample std of (0.5, 0.7) = 0.1414
  assert "| softmax | 0.6000 ± 0.1414 | 0.2500 ± 0.0000 |" in text
  assert "| linear | 0.2000 ± 0.1414 | 0.1000 ± 0.1414 |" in text
  assert "| softmax (8) | 60.00 ± 14.14 | 50.00 |" in text
  assert "| linear (16) | 10.00 ± 14.14 | — |" in text
  csv_rows = (tmp_path / "table.csv").read_text().splitlines()
  assert csv_rows[1].startswith("softmax,8,test_exact_accuracy,0.6")
  for plot in ("curves.png", "test_exact_accuracy_vs_data.max_length.png"):
    assert (tmp_path / plot).stat().st_size > 0


def test_table_marks_missing_and_failed_runs(tmp_path):
  _fake_sweep(str(tmp_path), {("softmax", 8, 0): 0.5, ("softmax", 8, 1): 0.7})
  os.remove(tmp_path / "attention=softmax,max_length=8,seed=1" / "metrics.jsonl")
  (tmp_path / "attention=softmax,max_length=8,seed=1" / "failure.json").write_text("{}")
  assert "| softmax | 0.5000 (1 of 2; 1 failed) |" in report.write(str(tmp_path))


def test_a_sweep_cut_short_has_its_table_and_plots(tmp_path):
  """A cell with no finished run yet (its run pending) is marked missing, and the plots
  against a final metric (state size) leave it out rather than fail."""
  _fake_sweep(str(tmp_path), {("softmax", 8, 0): 0.5, ("softmax", 16, 0): 0.7,
                              ("linear", 8, 0): 0.1, ("linear", 16, 0): 0.2},
              x_metric="state_size")
  os.remove(tmp_path / "attention=linear,max_length=16,seed=0" / "metrics.jsonl")
  text = report.write(str(tmp_path))
  assert "| linear | 0.1000 | pending |" in text
  assert (tmp_path / "test_exact_accuracy_vs_state_size.png").stat().st_size > 0


def test_the_default_job_is_a_sweep_of_every_variant_with_the_readmes_table(tmp_path):
  """`python launch.py`'s sweep: a run per variant, and its table (from the sweep report)
  has the README's columns; speed is the mean of the logged intervals after the first."""
  sweep = default.get_config()
  runs = grid.expand(sweep)
  assert [r.name for r in runs] == [f"variant={name}" for name in attention_zoo.names()]
  assert all(r.config.num_train_steps == 600 for r in runs)
  with open(tmp_path / "sweep.json", "w", encoding="utf-8") as f:
    json.dump(dict(table=sweep.table.to_dict(), runs=[
        dict(name=r.name, labels=r.labels, overrides=r.overrides) for r in runs]), f)
  records = [dict(step=100, steps_per_second=5.0, tokens_per_second=3000.0,
                  train_step_memory_mib=45.67),
             dict(step=200, steps_per_second=11.5, tokens_per_second=8000.4),
             dict(step=300, steps_per_second=12.3, tokens_per_second=8200.0),
             dict(step=300, final=True, test_exact_accuracy=0.9987,
                  test_long_exact_accuracy=0.0642, test_loss=0.00131)]
  os.makedirs(tmp_path / "variant=softmax")
  (tmp_path / "variant=softmax" / "metrics.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in records))
  text = report.write(str(tmp_path))
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  header = text.splitlines()[2]
  assert header.startswith("| variant | exact-sequence accuracy (test) |") and header in readme
  assert "| softmax | 0.999 | 0.064 | 0.0013 | 11.9 | 8,100 | 45.7 MiB |" in text
  assert "| linear | pending | pending |" in text


def test_a_child_runs_in_the_checkout_and_says_why_it_ended():
  done = children.run("""
      import json, os
      import attention_zoo, configs, experiments  # from the checkout, its working directory
      print(json.dumps([os.getcwd(), os.environ["AZ_TEST"]]))
  """, env=dict(AZ_TEST="set"), timeout=120)
  assert done.reason is None and done.last_json() == [REPO, "set"], done.stderr[-2000:]
  assert children.run("import sys; sys.exit(3)").reason == "the process exited with code 3"
  killed = children.run("import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
  assert killed.returncode == -15 and killed.reason == "the process was killed by SIGTERM"
  assert children.exit_reason(-9, 0, 0, "the run's process") == (
      "the run's process was killed by SIGKILL")
  assert "out of memory" in children.exit_reason(-9, 2, 3) and "OOM" not in (
      children.exit_reason(-9, None, 3))
  with pytest.MonkeyPatch.context() as patch:  # a device count replaces only the count
    patch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2 --xla_dump_to=/d")
    assert children.environment(devices=8)["XLA_FLAGS"] == (
        "--xla_dump_to=/d --xla_force_host_platform_device_count=8")
