"""What a person at the terminal sees: a mistake is one plain line (no traceback) and a
non-zero exit; the sweep's announcements; a peer that is not installed is named."""

import logging
import os

import pytest

from configs import base
from configs.bench import tiny as bench_tiny
from configs.sweeps import default, tiny
from experiments import benchmark, children, console, sweeps, tasks
from experiments.benchmark import peers
from experiments.sweeps import grid, runner


@pytest.mark.parametrize("args,message", [
    (["--config", "configs/copy.py", "--workdir", "{tmp}/run", "--config.model.atention=linear"],
     "--config.model.atention: config.model has no field 'atention' (did you mean 'attention'?)"),
    (["--config", "configs/copy.py", "--workdir", "{tmp}/run", "--config.model.attention=linaer"],
     "config.model.attention='linaer' is not a variant; choose from ['chunked', "),
    # options whose default is None take a value from the command line, checked as any other
    (["--config", "configs/copy.py", "--workdir", "{tmp}/run", "--config.model.attention=chunked",
      "--config.model.options.chunked.query_chunk_size=0"],
     "query_chunk_size must be a positive int, got 0"),
    (["--config", "configs/copy.py", "--workdir", "{tmp}/run", "--config.model.attention=chunked",
      "--config.model.options.chunked.implementation=triton"],
     "implementation must be None or one of ('xla', 'cudnn', 'pallas', 'cpu'), got 'triton'"),
    (["--config", "configs/nope.py"], "--config configs/nope.py: no such file"),
    (["--config", "configs/cpy.py", "--workdir", "{tmp}/run"],
     "--config configs/cpy.py: no such file (did you mean 'configs/copy.py'?)"),
    (["--config", "configs/copy.py", "--workdir", "{tmp}/file"],
     "--workdir {tmp}/file is a file, not a directory"),
    (["sweep", "--config", "configs/sweeps/tiny.py", "--workdir", "{tmp}/sweep",
      "--config.base.optimizer.name=adamww"], "(did you mean 'adamw'?)"),
    (["table", "--workdir", "{tmp}"], "{tmp} holds no sweep (no sweep.json): table needs a"),
])
def test_a_mistake_is_one_plain_line(args, message, tmp_path):
  (tmp_path / "file").write_text("not a directory")
  args = [a.replace("{tmp}", str(tmp_path)) for a in args]
  done = children.run(argv=["launch.py", *args], timeout=120)
  lines = done.stderr.strip().splitlines()
  assert done.returncode == 2, done.stderr[-2000:]
  assert "Traceback" not in done.stderr and len(lines) <= 2, done.stderr[-2000:]
  assert message.replace("{tmp}", str(tmp_path)) in lines[-1]
  assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


def test_bad_override_and_missing_config_name_the_closest():
  config = base.get_config()
  assert console.bad_override(config, "model.attention") is None
  assert "did you mean 'optimizer'" in console.bad_override(config, "optimiser.name")
  assert "config.seed is a value" in console.bad_override(config, "seed.x")
  assert "did you mean 'configs/sweeps/tiny.py'" in console.missing_config("configs/sweeps/tny.py")
  assert console.config_path(["launch.py", "--config=configs/copy.py:x"]) == "configs/copy.py"
  with pytest.raises(ValueError, match=r"is not a task; .* \(did you mean 'copy'\?\)"):
    tasks.entry("copyy")


def test_choose_names_the_closest_and_the_choices():
  assert console.choose({"adamw": 1}, "adamw", "x") == 1
  with pytest.raises(ValueError, match=r"x='adamww'; choose from \('adamw',\) \(did you mean"):
    console.choose({"adamw": 1}, "adamww", "x")
  with pytest.raises(console.ConfigError, match="bad"):
    with console.config_mistakes():
      raise ValueError("bad")


def test_quiet_filters_the_noise_at_its_loggers(caplog):
  console.quiet()
  console.quiet()  # once is enough; twice adds nothing
  assert logging.getLogger("absl").level == logging.ERROR
  with caplog.at_level(logging.WARNING):
    logging.warning("Conversion for %s has not been implemented.", int)  # orbax, on the root
    logging.warning("a real warning")
  assert [r.getMessage() for r in caplog.records] == ["a real warning"]


def test_bars_written_to_a_file_redraw_sparsely(tmp_path):
  with open(tmp_path / "log.txt", "w", encoding="utf-8") as f:
    bar = console.progress(total=10_000, file=f)
    for _ in range(10_000):
      bar.update(1)
    assert bar.mininterval >= 30 or f.isatty()
    bar.close()


def test_the_default_job_says_what_it_will_do_and_where_it_went(tmp_path):
  sweep = default.get_config()
  plan = sweeps.plan(sweep, grid.expand(sweep), str(tmp_path))
  assert plan.startswith("9 runs (variant: chunked, deltanet, ") and " on copy, 600 steps" in plan
  assert "9 to do, 0 already finished; expected about 16 minutes" in plan
  runs = [grid.Run(name, {}, {}, default.config(name)) for name in ("softmax", "linear")]
  (tmp_path / "softmax" / "checkpoints" / "300").mkdir(parents=True)
  (tmp_path / "softmax" / "checkpoints" / "300" / "x").write_bytes(b"0" * 2**20)
  (tmp_path / "curves.png").write_bytes(b"png")
  where = sweeps.outputs(str(tmp_path), runs)
  assert f"Table: {tmp_path}/table.md" in where and f"plots: {tmp_path}/curves.png" in where
  assert "(1.0 MiB of the 1.0 MiB in" in where
  states = {"softmax": "finished", "linear": "pending"}
  text = runner.doing(runs, states, {"linear": None}, {"softmax": 600, "linear": 600})
  assert text == "run 2 of 2: linear (final evaluation); 1 done"
  assert tiny.get_config().minutes


def test_an_absent_peer_is_named_in_the_table(tmp_path, monkeypatch):
  monkeypatch.setattr(peers, "torch_available", lambda: False)
  config = bench_tiny.get_config().unlock()
  config.lengths, config.causal, config.modes, config.torch = (16,), (False,), ("forward",), True
  config.variants = ()
  table = benchmark.run(config, str(tmp_path))
  assert "| torch | 16 | False | forward | absent: PyTorch is not installed" in table
  assert os.path.exists(tmp_path / "table.md")
