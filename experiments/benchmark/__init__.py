"""`python launch.py bench --config configs/bench/<name>.py --workdir runs/<name>`.

config.kind picks the benchmark: `attention` (every variant against JAX, over a grid),
`rabe_staats` or `lra_efficiency` (the published tables), `devices` (the training loop over
1-8 devices), `recurrence` (the gated and delta-rule recurrences against their scan form),
`packing` (training throughput with packed rows against padded ones).
Each writes results.json, results.csv and table.md to the workdir (and PNG plots for
`attention`), and prints the table.
"""

from __future__ import annotations

import csv
import importlib
import json
import os

from experiments import console
from experiments.benchmark.machine import describe

# Each kind's module is imported when that kind runs: the attention and recurrence
# benchmarks need the attention library alone, not the training loop's data stack (TFDS,
# grain), so they run wherever JAX does (the GPU check carries no more than ml_collections).
KINDS = {"attention": "attention:run_with_table", "rabe_staats": "papers:rabe_staats",
         "lra_efficiency": "papers:lra_efficiency", "devices": "devices:run",
         "recurrence": "recurrences:run", "packing": "packing:run"}


def _kind(name: str):
  module, function = KINDS[name].split(":")
  return getattr(importlib.import_module(f"experiments.benchmark.{module}"), function)


def check(config) -> None:
  """Raises ValueError on an unknown benchmark kind (the closest named)."""
  console.choose(KINDS, config.kind, "config.kind")


def run(config, workdir: str) -> str:
  check(config)
  os.makedirs(workdir, exist_ok=True)
  machine = describe()
  print(f"{config.kind} benchmark on {machine}", flush=True)
  rows, table = _kind(config.kind)(config)
  with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
    json.dump({"machine": machine, "config": config.to_dict(), "rows": rows}, f, indent=1,
              default=str)
  with open(os.path.join(workdir, "results.csv"), "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
  if config.kind == "attention":
    plot = importlib.import_module("experiments.benchmark.attention").plot
    table += "\n\nPlots: " + ", ".join(plot(rows, workdir))
  table = f"Machine: {machine}\n\n{table}"
  with open(os.path.join(workdir, "table.md"), "w", encoding="utf-8") as f:
    f.write(table + "\n")
  return table
