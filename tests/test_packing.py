"""Packed training rows (config.data.packing): the rows hold the examples, and the model
scores each example as it would alone in a row."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import attention_zoo
from configs import listops as listops_config
from configs.bench import packing as bench_packing
from experiments import benchmark, checks, data, metrics, objectives, train
from experiments.model import Transformer
from experiments.train_state import model_config
from tests import tiny

# shape -> {a field with segment ids: (its lengths, the fields scored alongside it)}
GROUPS = {"decoder": {"tokens": ("lengths", ("labels",))},
          "encoder_decoder": {"inputs": ("input_lengths", ()),
                              "decoder_inputs": ("target_lengths", ("targets",))},
          "encoder": {"inputs": ("input_lengths", ("labels",))}}
LISTOPS = {"data.task": "listops", "data.min_length": 3, "data.max_length": 20}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def _packed(data_dir, shape, pooling="cls"):
  """(config, task, an iterator of packed batches) of the tiny copy task (ListOps for the
  classifier)."""
  config = tiny.config("softmax", data_dir, **{"data.packing": True, "model.pooling": pooling},
                       **(LISTOPS if shape == "encoder" else {}))
  task = data.load_task(config.data)
  return config, task, iter(data.train_dataset(task, config.data, shape, 0, pooling))


def _unpack(batch, shape, pooling="cls") -> list[dict]:
  """The examples of a packed batch, row by row, each as data.encode gives it alone;
  checking on the way that each is contiguous, its positions count from 0, and the
  row's lengths are its filled length (and a classifier's CLS slot and label)."""
  examples = []
  for row in range(len(next(iter(batch.values())))):
    parts = collections.defaultdict(dict)
    for field, (lengths, alongside) in GROUPS[shape].items():
      ids, positions = batch[f"{field}_segment_ids"][row], batch[f"{field}_positions"][row]
      filled = batch[lengths][row]
      assert np.all(ids[:filled] > 0) and np.all(ids[filled:] == 0)
      for s in range(1, ids.max() + 1):
        at = np.flatnonzero(ids == s)
        np.testing.assert_array_equal(at, at[0] + np.arange(len(at)))
        np.testing.assert_array_equal(positions[at], np.arange(len(at)))
        parts[s][lengths] = np.int32(len(at))
        for f in (field, *alongside):
          parts[s][f] = np.pad(batch[f][row][at], (0, batch[f].shape[1] - len(at)),
                               constant_values=-1 if f == "labels" else 0)
    examples += [parts[s] for s in sorted(parts)]
  return [_classified(e, pooling == "cls") for e in examples] if shape == "encoder" else examples


def test_packing_the_classifier_needs_its_pooling(data_dir):
  """Without the pooling, the data cannot know whether to leave the CLS slot: it raises
  rather than let the CLS vector overwrite each example's first token."""
  config, task, _ = _packed(data_dir, "encoder")
  with pytest.raises(ValueError, match="packing the classifier needs its pooling"):
    data.train_dataset(task, config.data, "encoder", 0)


def _classified(example, slot: bool) -> dict:
  """A packed classifier example as data.encode gives it: its label from its first
  position (scored alone), without the CLS slot (BOS) before it."""
  labels, inputs, length = example["labels"], example["inputs"], example["input_lengths"]
  assert labels[0] >= 0 and np.all(labels[1:] == -1)
  if slot:  # the packed rows are one longer than the inputs
    assert inputs[0] == data.BOS
    inputs, length = inputs[1:], length - 1
  return dict(inputs=inputs, input_lengths=np.int32(length), label=np.int32(labels[0]))


def _identity(example) -> tuple:
  return tuple((k, example[k].tobytes()) for k in sorted(example))


@pytest.mark.parametrize("shape", ["decoder", "encoder_decoder", "encoder"])
def test_packed_rows_hold_the_examples(data_dir, shape):
  """Every example of a packed row is one of the task's, field for field, and the
  iterator resumes from its state mid-way through a packed batch (32 bins, 8 rows a
  batch)."""
  config, task, stream = _packed(data_dir, shape)
  alone = {_identity(data.encode(task, e, "train", shape)) for e in task.sources["train"]}
  batches = [next(stream) for _ in range(3)]
  examples = [e for batch in batches for e in _unpack(batch, shape)]
  assert all(_identity(e) in alone for e in examples)
  assert len(examples) > len(batches) * config.data.batch_size  # rows holding several
  state = stream.get_state()
  expected = next(stream)
  resumed = iter(data.train_dataset(task, config.data, shape, 0, "cls"))
  resumed.set_state(state)
  for k, v in next(resumed).items():
    np.testing.assert_array_equal(v, expected[k], err_msg=k)


def _scores(objective, model, batch):
  """Per-token losses [B, P], the scored positions [B, P] and objectives.sums, jitted."""
  graphdef, params = nnx.split(model)

  @jax.jit
  def scores(params, batch):
    logits = objective.logits(nnx.merge(graphdef, params), batch, None)
    labels, weights = objective.scored(batch)
    logits = logits[:, None] if logits.ndim == 2 else logits  # a class per row
    return (optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0)),
            weights, objectives.sums(objective, logits, batch))

  return jax.device_get(scores(params, batch))


@pytest.mark.parametrize("shape,variant,positions,pooling", [
    ("decoder", "softmax", "rope", None), ("decoder", "chunked", "alibi", None),
    ("decoder", "gated_deltanet", "rope", None),  # a restarting state (and its layer's gates)
    ("encoder_decoder", "softmax", "learned", None),
    ("encoder_decoder", "chunked", "sinusoidal", None),
    ("encoder", "chunked", "rope", "cls"), ("encoder", "local", "learned", "mean")])
def test_packed_and_unpacked_losses_agree(data_dir, shape, variant, positions, pooling):
  """The same examples, packed or one a row, with the same parameters: the same loss at
  every scored token (a classifier's class), and the same sums (exact counts examples, not
  rows). chunked's blocks of 4 x 4, shorter than a row, let it skip blocks that no segment
  shares."""
  _, task, stream = _packed(data_dir, shape, pooling)
  packed = next(stream)
  examples = _unpack(packed, shape, pooling)
  alone = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
  config = tiny.config(variant, data_dir, **{"model.positions": positions, "model.shape": shape,
                                             "model.pooling": pooling or "cls",
                                             "model.options.chunked.query_chunk_size": 4,
                                             "model.options.chunked.key_chunk_size": 4},
                       **(LISTOPS if shape == "encoder" else {}))
  model = Transformer(model_config(config.model, task.vocab_size, shape, task.num_classes),
                      rngs=nnx.Rngs(0))
  objective = objectives.OBJECTIVES[shape]
  packed_losses, packed_scored, packed_sums = _scores(objective, model, packed)
  alone_losses, alone_scored, alone_sums = _scores(objective, model, alone)
  ids = objective.segments(packed)
  i = 0
  for row in range(len(ids)):
    for s in range(1, ids[row].max() + 1):
      np.testing.assert_allclose(packed_losses[row][(ids[row] == s) & packed_scored[row]],
                                 alone_losses[i][alone_scored[i]], rtol=1e-5, atol=1e-6)
      i += 1
  assert i == len(alone_losses) == packed_sums["rows"] == alone_sums["rows"]
  for k in ("correct", "count", "exact"):
    assert packed_sums[k] == alone_sums[k], k
  np.testing.assert_allclose(packed_sums["loss_sum"], alone_sums["loss_sum"], rtol=1e-5)


def test_exact_counts_each_packed_example():
  """Two examples in one row, one scored right throughout and one not: exact 1 of 2."""
  batch = dict(tokens=np.zeros((1, 4), np.int32), lengths=np.array([4]),
               labels=np.array([[1, 2, 1, 2]]), tokens_segment_ids=np.array([[1, 1, 2, 2]]),
               tokens_positions=np.array([[0, 1, 0, 1]]))
  logits = jax.nn.one_hot(np.array([[1, 2, 1, 0]]), 3)  # the last token wrong
  sums = objectives.sums(objectives.LANGUAGE_MODEL, logits, batch)
  assert (int(sums["exact"]), int(sums["rows"]), int(sums["correct"])) == (1, 2, 3)


def test_packing_refuses_roles_a_variant_cannot_keep_apart(tmp_path):
  """A variant whose state restarts at segments (its entry's `segments` is "runs") keeps
  packed examples apart in causal self-attention only: in a seq2seq model's encoder it is
  one line naming the field, the variant and the role."""
  entries = {n: attention_zoo.registry.entry(n) for n in attention_zoo.names()}
  restarting = [n for n, e in entries.items() if e.segments == "runs" and not e.causal_only]
  assert restarting  # linear
  with pytest.raises(ValueError, match=rf"config.model.encoder_attention='{restarting[0]}' "
                                       rf"cannot take the segment ids .* encoder self-attention"):
    checks.check_config(tiny.config(restarting[0], tmp_path, **{"data.packing": True}))
  checks.check_config(tiny.config(restarting[0], tmp_path, **{  # a decoder-only LM: causal
      "data.packing": True, "model.shape": "decoder"}))
  config = listops_config.get_config()  # the classifier: encoder self-attention
  config.data.data_dir, config.data.packing, config.model.attention = str(tmp_path), True, \
      restarting[0]
  with pytest.raises(ValueError, match=rf"'{restarting[0]}' cannot take .* encoder self-att"):
    checks.check_config(config)


@pytest.mark.parametrize("shape", ["decoder", "encoder"])
def test_two_packed_steps(data_dir, tmp_path, shape):
  """The loop trains on packed rows (the LM: seq2seq's forward pass is the one compared
  above; the classifier, with its CLS slots) and evaluates one example a row."""
  final = train.train_and_evaluate(
      tiny.config("softmax", data_dir, **{"data.packing": True, "model.shape": shape},
                  **(LISTOPS if shape == "encoder" else {})), str(tmp_path))
  logged = [r for r in metrics.read(str(tmp_path)) if "train_loss" in r]
  assert [r["step"] for r in logged] == [1, 2]
  assert all(np.isfinite(r["train_loss"]) for r in logged)
  assert 0 <= final["test_accuracy"] <= 1 and np.isfinite(final["validation_loss"])


def test_packing_benchmark_table(data_dir, tmp_path):
  """`launch.py bench --config configs/bench/packing.py` on the tiny run: both cases, a
  ratio (not asserted: no timing is)."""
  config = bench_packing.get_config().unlock()
  config.shapes, config.steps, config.rounds = ("decoder",), 2, 1
  config.experiment = tiny.config("softmax", data_dir)
  table = benchmark.run(config, str(tmp_path))
  assert "| decoder | padded | 1.00 |" in table and "| decoder | packed |" in table
