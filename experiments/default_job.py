"""The default job: every variant on the copy task, ending with one comparison table."""

from __future__ import annotations

import json
import os

import attention_zoo
from configs import base, copy as copy_config
from experiments import metrics, train

HEADER = ("| variant | exact-sequence accuracy (test) | exact (test_long) | test loss | "
          "steps/s | tokens/s | peak memory of a train step |\n|---|---|---|---|---|---|---|")


def config(variant: str):
  c = base.override(copy_config.get_config(), base.attention_fields(variant))
  # Small enough for a few minutes per variant on 2 CPU cores.
  c.data.max_length, c.data.long_max_length, c.data.num_train = 16, 24, 10_000
  c.num_train_steps, c.eval_every, c.checkpoint_every, c.log_every = 600, 300, 300, 100
  c.optimizer.warmup_steps = 50
  return c


def row(variant: str, workdir: str) -> str:
  final = json.load(open(os.path.join(workdir, "final_metrics.json"), encoding="utf-8"))
  logged = metrics.read(workdir)
  speed = [r for r in logged if "steps_per_second" in r][1:] or [r for r in logged if
                                                                  "steps_per_second" in r]
  mean = lambda k: sum(r[k] for r in speed) / len(speed)
  memory = next(r["train_step_memory_mib"] for r in logged if "train_step_memory_mib" in r)
  return (f"| {variant} | {final['test_exact_accuracy']:.3f} | "
          f"{final['test_long_exact_accuracy']:.3f} | {final['test_loss']:.4f} | "
          f"{mean('steps_per_second'):.1f} | {mean('tokens_per_second'):,.0f} | "
          f"{memory:.1f} MiB |")


def run(root: str = "runs/default") -> str:
  rows = []
  for variant in attention_zoo.names():
    workdir = os.path.join(root, variant)
    train.train_and_evaluate(config(variant), workdir)
    rows.append(row(variant, workdir))
  table = "\n".join([HEADER, *rows])
  with open(os.path.join(root, "table.md"), "w", encoding="utf-8") as f:
    f.write(table + "\n")
  return table
