"""The TFDS task builders and the input pipeline, on small locally generated data."""

import numpy as np
import pytest

from experiments import data
from experiments.tasks import text_pairs
from tests import tiny

def _add(symbols):
  """'a+b' as digit symbols (10 is '+') -> the digits of a + b."""
  a, b = ("".join(map(str, part)) for part in np.split(symbols, [np.argmax(symbols == 10)]))
  return [int(d) for d in str(int(a) + int(b[1:]))]


RULES = {"copy": lambda x: x, "reverse": lambda x: x[::-1], "sort": np.sort, "addition": _add}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.mark.parametrize("task", list(RULES))
def test_synthetic_examples_follow_their_rule(task, data_dir):
  cfg = tiny.config(data_dir=data_dir, **{"data.task": task}).data
  loaded = data.load_task(cfg)
  for split, source in loaded.sources.items():
    lengths = []
    for i in range(len(source)):
      inputs, targets = loaded.to_symbols(source[i])
      np.testing.assert_array_equal(targets, RULES[task](np.asarray(inputs)))
      lengths.append(len(inputs) if task != "addition" else np.argmax(inputs == 10))
    low, high = ((cfg.max_length + 1, cfg.long_max_length) if split == "test_long"
                 else (cfg.min_length, cfg.max_length))
    assert low <= min(lengths) and max(lengths) <= high, (split, min(lengths), max(lengths))


def test_splits_are_different_draws(data_dir):
  loaded = data.load_task(tiny.config(data_dir=data_dir).data)
  draws = {s: {tuple(src[i]["inputs"]) for i in range(len(src))}
           for s, src in loaded.sources.items()}
  assert len(draws["validation"] & draws["test"]) < len(draws["test"]) / 2


def test_text_pairs_are_bytes_of_the_rule(data_dir):
  loaded = data.load_task(tiny.config(data_dir=data_dir, **{
      "data.task": "text", "data.tfds_name": "zoo_tiny_text_pairs"}).data)
  inputs, targets = loaded.to_symbols(loaded.sources["train"][0])
  english = bytes(inputs.astype(np.uint8)).decode()
  assert bytes(targets.astype(np.uint8)).decode() == " ".join(
      map(text_pairs.pig_latin, english.split()))
  assert loaded.vocab_size == 256 + data.RESERVED


def test_encoding_adds_bos_eos_and_padding(data_dir):
  loaded = data.load_task(tiny.config(data_dir=data_dir).data)
  example = {"inputs": np.array([0, 4, 2]), "targets": np.array([0, 4, 2])}
  e = data.encode(loaded, example, "train", "encoder_decoder")
  max_in, max_out = loaded.lengths["train"]
  np.testing.assert_array_equal(e["inputs"], np.pad([3, 7, 5], (0, max_in - 3)))
  np.testing.assert_array_equal(e["decoder_inputs"][:4], [data.BOS, 3, 7, 5])
  np.testing.assert_array_equal(e["targets"][:4], [3, 7, 5, data.EOS])
  assert (e["input_lengths"], e["target_lengths"]) == (3, 4)
  with pytest.raises(ValueError, match="exceeds the padded lengths"):
    data.encode(loaded, {"inputs": np.zeros(max_in + 1), "targets": np.zeros(1)}, "train",
                "encoder_decoder")


def test_training_order_is_seeded_and_resumes_at_the_next_batch(data_dir):
  cfg = tiny.config(data_dir=data_dir).data
  loaded = data.load_task(cfg)
  first = iter(data.train_dataset(loaded, cfg, "encoder_decoder", seed=0))
  batches = [next(first) for _ in range(3)]
  again = iter(data.train_dataset(loaded, cfg, "encoder_decoder", seed=0))
  np.testing.assert_array_equal(next(again)["inputs"], batches[0]["inputs"])
  state = again.get_state()
  resumed = iter(data.train_dataset(loaded, cfg, "encoder_decoder", seed=0))
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)["inputs"], batches[1]["inputs"])
  other = next(iter(data.train_dataset(loaded, cfg, "encoder_decoder", seed=1)))
  assert not np.array_equal(other["inputs"], batches[0]["inputs"])


def test_last_eval_batch_is_padded_with_empty_rows(data_dir):
  cfg = tiny.config(data_dir=data_dir).data  # 40 examples, batches of 16
  loaded = data.load_task(cfg)
  batches = list(data.eval_batches(loaded, cfg, "encoder_decoder", "validation"))
  assert [b["inputs"].shape[0] for b in batches] == [16, 16, 16]
  assert int((batches[-1]["target_lengths"] > 0).sum()) == 40 - 32


def test_a_placement_gives_each_process_its_rows_and_the_mesh_its_lengths(data_dir):
  """Process 1 of 2 gets the second half of every evaluation batch and every other
  training example; lengths round up to the sequence axis's multiple."""
  cfg = tiny.config(data_dir=data_dir).data
  whole = data.load_task(cfg)
  second = data.load_task(cfg, data.Placement(process=1, processes=2, length_multiple=4))
  assert second.lengths == {s: tuple(-(-n // 4) * 4 for n in lengths)
                            for s, lengths in whole.lengths.items()}
  full = next(data.eval_batches(whole, cfg, "encoder_decoder", "validation"))
  half = next(data.eval_batches(second, cfg, "encoder_decoder", "validation"))
  np.testing.assert_array_equal(half["input_lengths"], full["input_lengths"][8:])
  train = next(iter(data.train_dataset(second, cfg, "encoder_decoder", seed=0)))
  assert train["inputs"].shape == (cfg.batch_size // 2, second.lengths["train"][0])


def test_the_configs_default_data_builds(data_dir):
  """The default parameters name the builder's registered config (20,000 examples)."""
  from configs import copy as copy_config
  cfg = copy_config.get_config().data
  with cfg.unlocked():
    cfg.data_dir = str(data_dir)
  loaded = data.load_task(cfg)
  assert len(loaded.sources["train"]) == cfg.num_train


def test_the_data_path_needs_no_tensorflow(tmp_path):
  """Builds a task and reads a training batch in a fresh process: TensorFlow is never
  imported (checked in sys.modules, so it holds whether or not TensorFlow is installed)."""
  from experiments import children  # pylint: disable=import-outside-toplevel
  code = ("import sys\nfrom experiments import data\nfrom tests import tiny\n"
          f"cfg = tiny.config(data_dir={str(tmp_path)!r}).data\n"
          "task = data.load_task(cfg)\n"
          "batch = next(iter(data.train_dataset(task, cfg, 'encoder_decoder', seed=0)))\n"
          "assert batch['inputs'].shape == (cfg.batch_size, task.lengths['train'][0])\n"
          "imported = {m.split('.')[0] for m, mod in sys.modules.items() if mod is not None}\n"
          "assert 'tensorflow' not in imported, 'the data path imported tensorflow'\n")
  result = children.run(code, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
