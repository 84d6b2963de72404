"""Sweeps: a grid of experiments run to completion across re-launches, then a table.

    python launch.py sweep --config configs/sweeps/variants.py --workdir runs/variants
    python launch.py table --workdir runs/variants      # the table and plots again

The sweep's workdir holds sweep.json (the expanded grid), one workdir per run, results.json
(every run's overrides, status and final metrics), table.md, table.csv and the plots.
"""

from __future__ import annotations

import json
import os

from experiments.sweeps import grid, report, runner


def run(sweep, workdir: str) -> str:
  """Runs every pending run of the sweep, then writes and returns its table."""
  runs = grid.expand(sweep)  # every run's config is checked before any run starts
  grid.check_layout(sweep)
  grid.check_devices(runs)
  os.makedirs(workdir, exist_ok=True)
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
  return text
