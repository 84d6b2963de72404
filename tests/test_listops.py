"""The ListOps builder: every example evaluates to its label, within LRA's limits."""

import statistics

import numpy as np
import pytest

from configs import base
from experiments import data
from experiments.tasks import listops

MIN_LENGTH, MAX_LENGTH, MAX_DEPTH, MAX_ARGS = 20, 120, 10, 10


def evaluate(text: str) -> tuple[int, int, int]:
  """(value, nesting depth, most arguments of one operator) of an expression in text form,
  read left to right with a stack, apart from the generator's recursion."""
  stack, depth, widest = [[]], 0, 0
  for token in text.split():
    if token.startswith("["):
      stack.append([token])
      depth = max(depth, len(stack) - 1)
    elif token == "]":
      operator, *args = stack.pop()
      widest = max(widest, len(args))
      value = {"[MAX": max, "[MIN": min, "[SM": lambda a: sum(a) % 10,
               "[MED": lambda a: int(statistics.median(a))}[operator](args)
      stack[-1].append(value)
    else:
      stack[-1].append(int(token))
  (value,) = stack.pop()
  assert not stack, text
  return value, depth, widest


@pytest.fixture(scope="module")
def task(tmp_path_factory):
  cfg = base.for_task("listops", min_length=MIN_LENGTH, max_length=MAX_LENGTH, num_train=300,
                      num_eval=60, data_dir=str(tmp_path_factory.mktemp("tfds"))).data
  return data.load_task(cfg), cfg


def test_examples_evaluate_to_their_labels_within_the_limits(task):
  task, _ = task
  seen, widest_overall = set(), 0
  for split, count in (("train", 300), ("validation", 60), ("test", 60)):
    source = task.sources[split]
    assert len(source) == count
    for i in range(count):
      example = source[i]
      tokens, (label,) = example["inputs"], example["targets"]
      value, depth, widest = evaluate(listops.to_text(tokens))
      assert value == label, listops.to_text(tokens)
      assert MIN_LENGTH < len(tokens) < MAX_LENGTH
      assert 1 <= depth <= MAX_DEPTH - 1 and 2 <= widest <= MAX_ARGS
      widest_overall = max(widest_overall, widest)
      seen.add(tokens.tobytes())
  assert len(seen) == 420  # distinct within and across splits
  assert widest_overall == MAX_ARGS


def test_every_operator_and_answer_occurs(task):
  task, _ = task
  examples = [task.sources["train"][i] for i in range(300)]
  tokens = np.concatenate([e["inputs"] for e in examples])
  assert set(np.unique(tokens)) == set(range(len(listops.TOKENS)))
  assert len({int(e["targets"][0]) for e in examples}) == 10


def test_median_rounds_down_as_lra():
  assert listops.apply(12, [1, 2]) == 1 and listops.apply(12, [3, 1, 2]) == 2
  assert listops.apply(13, [9, 9, 3]) == 1 and listops.apply(10, [0, 7, 3]) == 7


def test_listops_feeds_the_classifier(task):
  task, cfg = task
  batch = next(iter(data.eval_batches(task, cfg, "encoder", "test", max_batches=1)))
  assert batch["inputs"].shape == (cfg.eval_batch_size, MAX_LENGTH)
  real = batch["input_lengths"] > 0  # 60 examples; the batch is padded with empty rows
  assert real.sum() == 60 and task.num_classes == 10
  answers = [int(task.sources["test"][i]["targets"][0]) for i in range(60)]
  np.testing.assert_array_equal(batch["label"][real], answers)


def test_listops_feeds_the_seq2seq_readout(task):
  task, cfg = task
  batch = next(iter(data.eval_batches(task, cfg, "encoder_decoder", "test", max_batches=1)))
  assert batch["inputs"].shape == (cfg.eval_batch_size, MAX_LENGTH)
  assert batch["targets"].shape == (cfg.eval_batch_size, 2)  # the answer, then EOS
  real = batch["input_lengths"] > 0  # 60 examples; the batch is padded with empty rows
  assert real.sum() == 60 and set(batch["target_lengths"][real]) == {2}
  assert np.all(batch["targets"][real, 1] == data.EOS)
