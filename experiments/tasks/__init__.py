"""Tasks by name: each entry holds everything the rest of the code knows about its task.

Adding a task: a TFDS builder module here and one entry in TASKS (or, from another
package, `register(name, TaskEntry(...))`). The input pipeline (experiments/data.py), the
config checks and the loop read the entry; none of them keeps a list of task names.

Token ids shared by every task: 0 padding, 1 begin-of-sequence, 2 end-of-sequence; a
task's symbols 0, 1, ... are the ids RESERVED, RESERVED + 1, ...
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import tensorflow_datasets as tfds

from experiments import console

# Importing text_pairs registers its builder, zoo_tiny_text_pairs, with TFDS.
from experiments.tasks import listops, mqar, synthetic, text_pairs
from experiments.tasks.listops import ZooListOps
from experiments.tasks.synthetic import ZooAddition, ZooCopy, ZooReverse, ZooSort

PAD, BOS, EOS = 0, 1, 2
RESERVED = 3

SEQ2SEQ_SHAPES = ("encoder_decoder", "decoder")  # a seq2seq task also trains as an LM


def _pair(cfg):
  """(inputs, targets) of a generated task's example (synthetic.sequence_pair_info)."""
  return lambda example: (example["inputs"], example["targets"])


@dataclasses.dataclass(frozen=True)
class TaskEntry:
  """One task's facts; every callable takes the config.data block."""
  builder: Callable        # -> (TFDS builder class or factory, its BuilderConfig or None)
  vocab_size: Callable     # -> the number of task symbols (ids RESERVED on)
  lengths: Callable        # -> {split: (longest input, longest target + EOS)} (a split the
  #                             prepared dataset lacks is left out)
  shapes: tuple[str, ...]  # the model shapes (experiments/model.py) it trains, its own first
  to_symbols: Callable = _pair  # -> (example -> (input symbols, target symbols or labels))
  check: Callable = lambda cfg: None  # raises ValueError naming the config.data field
  test_splits: Callable = lambda cfg: ("test",)  # the splits whose metrics pool as `test_*`
  labelled: bool = False            # examples carry per-token labels (an LM task: MQAR)
  num_classes: int | None = None    # a one-symbol target read as a class (classifier)

  def sizes(self, cfg) -> tuple[int, int, int]:
    """(vocabulary with the reserved ids, longest input, longest target with EOS) over
    every split."""
    lengths = self.lengths(cfg).values()
    return (self.vocab_size(cfg) + RESERVED, max(i for i, _ in lengths),
            max(t for _, t in lengths))


def synthetic_entry(builder_cls) -> TaskEntry:
  """The entry of a generated sequence-pair task (a synthetic.SyntheticTask subclass)."""
  return TaskEntry(
      builder=lambda cfg: (builder_cls, synthetic.builder_config(cfg)),
      vocab_size=lambda cfg: builder_cls.vocab_size(synthetic.builder_config(cfg)),
      lengths=functools.partial(synthetic.lengths, builder_cls), shapes=SEQ2SEQ_SHAPES,
      check=synthetic.check)


SYNTHETIC = {"copy": ZooCopy, "reverse": ZooReverse, "sort": ZooSort, "addition": ZooAddition}

TASKS: dict[str, TaskEntry] = {
    **{name: synthetic_entry(builder_cls) for name, builder_cls in SYNTHETIC.items()},
    # LRA's ListOps, generated; its one-digit answer is a class by default.
    "listops": TaskEntry(
        builder=lambda cfg: (ZooListOps, listops.builder_config(cfg)),
        vocab_size=lambda cfg: ZooListOps.VOCAB_SIZE, lengths=listops.lengths,
        shapes=("encoder", *SEQ2SEQ_SHAPES), check=listops.check,
        num_classes=listops.NUM_CLASSES),
    # Multi-query associative recall, generated: a language-modelling task only.
    "mqar": TaskEntry(
        builder=lambda cfg: (mqar.ZooMQAR, mqar.builder_config(cfg)),
        vocab_size=lambda cfg: cfg.vocab_size, lengths=mqar.lengths, shapes=("decoder",),
        to_symbols=lambda cfg: lambda e: (e["inputs"], e["labels"]), check=mqar.check_config,
        test_splits=mqar.test_splits, labelled=True),
    # Any TFDS text-pair dataset named by config.data.tfds_name, at the byte level.
    "text": TaskEntry(
        builder=lambda cfg: (functools.partial(tfds.builder, cfg.tfds_name), None),
        vocab_size=lambda cfg: text_pairs.VOCAB_SIZE, lengths=text_pairs.lengths,
        shapes=SEQ2SEQ_SHAPES, to_symbols=text_pairs.to_symbols, check=text_pairs.check),
}


def names() -> tuple[str, ...]:
  return tuple(TASKS)


def entry(name: str) -> TaskEntry:
  """The task `name`'s entry; ValueError listing the tasks if there is none."""
  if name not in TASKS:
    raise ValueError(f"config.data.task={name!r} is not a task; choose from {names()}"
                     f"{console.closest(name, TASKS)}")
  return TASKS[name]


def register(name: str, task: TaskEntry) -> None:
  """Adds `task` under `name`, so that configs, the input pipeline and the loop take it."""
  if not isinstance(task, TaskEntry):
    raise TypeError(f"register({name!r}, ...): expected a tasks.TaskEntry, got {task!r}")
  if name in TASKS:
    raise ValueError(f"task {name!r} is already registered")
  TASKS[name] = task


def model_shape(config) -> str:
  """The shape config.model.shape asks for, or else the task's own."""
  return config.model.shape or entry(config.data.task).shapes[0]
