"""Sweeps: a grid of experiments run to completion across re-launches, then a table.

    python launch.py sweep --config configs/sweeps/variants.py --workdir runs/variants
    python launch.py table --workdir runs/variants      # the table and plots again

The sweep's workdir holds sweep.json (the expanded grid), one workdir per run, results.json
(every run's overrides, status and final metrics), table.md, table.csv and the plots.
"""

from __future__ import annotations

import json
import os

from experiments import console
from experiments.sweeps import grid, report, runner


def run(sweep, workdir: str) -> str:
  """Runs every pending run of the sweep, then writes and returns its table, followed by
  where the table, plots and checkpoints are."""
  with console.config_mistakes():  # every run's config is checked before any run starts
    runs = grid.expand(sweep)
    grid.check_layout(sweep)
    grid.check_devices(runs)
    runner.check_begun_runs(workdir, runs)  # the sweep edited since they began
  os.makedirs(workdir, exist_ok=True)
  for name, source in runner.reuse(sweep, workdir, runs).items():
    print(f"{name}: finished in {source} with the same config; copied, not run again")
  print(plan(sweep, runs, workdir), flush=True)
  with open(os.path.join(workdir, "sweep.json"), "w", encoding="utf-8") as f:
    json.dump(dict(table=sweep.table.to_dict(),
                   runs=[dict(name=r.name, labels=r.labels, overrides=r.overrides) for r in runs],
                   base=json.loads(sweep.base.to_json_best_effort())), f, indent=2)
  states = runner.run_all(sweep, workdir, runs)
  failed = [name for name, state in states.items() if state == "failed"]
  text = report.write(workdir)
  if failed:
    text += (f"\n{len(failed)} of {len(runs)} runs failed (their errors are in "
             f"{os.path.join(workdir, 'results.json')}): {', '.join(failed)}\n")
  return text + "\n" + outputs(workdir, runs)


def plan(sweep, runs: list[grid.Run], workdir: str) -> str:
  """What the sweep is about to do: its axes, tasks, steps, and the expected minutes
  (sweep.minutes, measured for the whole sweep, scaled to the runs still to do)."""
  todo = [r for r in runs if runner.status(os.path.join(workdir, r.name)) != "finished"]
  axes = "; ".join(f"{name}: {', '.join(values)}" for name, values in grid.cases(sweep).items())
  tasks = ", ".join(sorted({r.config.data.task for r in runs}))
  steps = "/".join(str(n) for n in sorted({r.config.num_train_steps for r in runs}))
  minutes = sweep.get("minutes")
  left = max(1, round(minutes * len(todo) / len(runs))) if minutes and todo else 0
  expected = (f"; expected about {left} minute{'s' * (left > 1)} (measured on a 2-core CPU)"
              if left else "")
  return (f"{len(runs)} runs ({axes}) on {tasks}, {steps} steps each, in {workdir}: "
          f"{len(todo)} to do, {len(runs) - len(todo)} already finished{expected}.")


def _mib(paths) -> float:
  return sum(os.path.getsize(os.path.join(d, f)) for p in paths for d, _, files in os.walk(p)
             for f in files if not os.path.islink(os.path.join(d, f))) / 2**20


def outputs(workdir: str, runs: list[grid.Run]) -> str:
  """Where the sweep's results went, and their size on disk."""
  plots = sorted(f for f in os.listdir(workdir) if f.endswith(".png"))
  saved = [os.path.join(workdir, r.name, d) for r in runs for d in ("checkpoints", "best")]
  return (f"Table: {os.path.join(workdir, 'table.md')} (and table.csv, results.json); plots: "
          f"{', '.join(os.path.join(workdir, p) for p in plots) or 'none'}; checkpoints: "
          f"{os.path.join(workdir, '<run>', 'checkpoints')} and best/ "
          f"({_mib(saved):.1f} MiB of the {_mib([workdir]):.1f} MiB in {workdir}).\n")
