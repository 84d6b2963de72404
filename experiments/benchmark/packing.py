"""Training throughput with packed rows (config.data.packing) against padded ones.

For each shape, config.experiment's model trains on its task (one whose lengths vary;
config.classifier_experiment's for the classifier) twice, on padded rows and on packed
ones, each after five untimed steps (the first compiles). A step's time includes drawing
its batch from the input pipeline (packing is done there, in Python). The two alternate
in `rounds` of steps, so that other work on the machine slows both alike and their ratio
holds even when the absolute rates do not.
Useful target tokens are the scored positions (targets and EOS; a classifier's one class
per example; padding never counts), the rate packing should raise; `vs padded` is the
packed rate over the padded one.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import numpy as np

from experiments import checks, data, objectives, optimizer, tables, train
from experiments.train_state import TrainState, model_config


@dataclasses.dataclass
class _Case:
  """One training run being timed: its step, state and batches, and what it has done."""
  shape: str
  packing: bool
  rows: int
  objective: objectives.Objective
  step: object
  state: object
  batches: object
  seconds: float = 0.0
  steps: int = 0
  examples: int = 0
  targets: int = 0
  loss: float = float("nan")

  def run(self, steps: int) -> None:
    started = time.perf_counter()
    for _ in range(steps):
      batch = next(self.batches)
      segments = self.objective.segments(batch)  # packed: a row's examples are 1, 2, ...
      self.examples += self.rows if segments is None else int(segments.max(axis=1).sum())
      self.targets += int(np.sum(self.objective.scored(batch)[1]))
      self.state, logged = self.step(self.state, batch)
    self.loss = float(logged["loss"])  # waits for the last step
    self.seconds += time.perf_counter() - started
    self.steps += steps


def _case(config, shape: str, packing: bool) -> _Case:
  experiment = config.classifier_experiment if shape == "encoder" else config.experiment
  c = experiment.copy_and_resolve_references()
  c.model.shape, c.data.packing = shape, packing
  checks.check_config(c)
  task = data.load_task(c.data)
  objective = objectives.OBJECTIVES[shape]
  tx, _ = optimizer.from_config(c.optimizer, c.num_train_steps)
  state = TrainState.create(model_config(c.model, task.vocab_size, shape, task.num_classes),
                            tx, c.seed)
  step = jax.jit(functools.partial(train.train_step, objective, jax.random.key(c.seed)),
                 donate_argnums=0)
  case = _Case(shape, packing, c.data.batch_size, objective, step, state,
               iter(data.train_dataset(task, c.data, shape, c.seed, c.model.pooling)))
  case.run(5)
  case.seconds = case.steps = case.examples = case.targets = 0
  return case


def run(config):
  rows = []
  for shape in config.shapes:
    cases = [_case(config, shape, packing) for packing in (False, True)]
    for _ in range(config.rounds):
      for case in cases:
        case.run(config.steps // config.rounds)
    rows += [dict(shape=c.shape, packing=c.packing, steps_per_second=c.steps / c.seconds,
                  examples_per_second=c.examples / c.seconds,
                  target_tokens_per_second=c.targets / c.seconds,
                  examples_per_row=c.examples / (c.steps * c.rows), train_loss=c.loss)
             for c in cases]
  return rows, table(rows)


def table(rows) -> str:
  padded = {r["shape"]: r for r in rows if not r["packing"]}
  body = [[r["shape"], "packed" if r["packing"] else "padded", f"{r['examples_per_row']:.2f}",
           f"{r['steps_per_second']:.1f}", f"{r['examples_per_second']:,.0f}",
           f"{r['target_tokens_per_second']:,.0f}",
           tables.number(r["target_tokens_per_second"]
                         / padded[r["shape"]]["target_tokens_per_second"], ".2f", "x")]
          for r in rows]
  return tables.markdown(["shape", "rows", "examples a row", "steps/s", "examples/s",
                          "target tokens/s", "vs padded"], body)
