"""The three model shapes (encoder-decoder, decoder-only LM, encoder-only classifier) and MQAR."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attention_zoo
from configs import base, mqar as mqar_config
from experiments import checks, data, metrics, train
from experiments.model import Transformer, TransformerConfig
from experiments.tasks import mqar
from tests import tiny

OPTIONS = (("local", (("local_window_size", 3),)),)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def _mqar_config(variant, data_dir, **overrides):
  c = mqar_config.get_config("reduced")
  c.data.update(dict(data_dir=str(data_dir), vocab_size=64, num_train=64, num_eval=16,
                     batch_size=8, eval_batch_size=8, mqar_train_pairs=((16, 2), (32, 4)),
                     mqar_test_pairs=((16, 2), (32, 8))))
  c.model.update(dict(d_model=32, num_heads=2, d_ff=64, num_decoder_layers=1))
  c.model.options.local.local_window_size = 3
  c.update(dict(num_train_steps=2, log_every=1, eval_every=2, checkpoint_every=1,
                eval_batches=1, progress_bar=False))
  return base.override(c, {**base.attention_fields(variant), **overrides})


def test_mqar_labels_are_the_values_bound_to_the_keys():
  """Every example, at every (L, N): a dictionary built from its pairs gives its labels."""
  rng = np.random.default_rng(0)
  for length, pairs in ((16, 2), (64, 4), (128, 16), (256, 64)):
    for random_non_queries in (False, True):
      for _ in range(20):
        tokens, labels = mqar.example(rng, 512, length, pairs, random_non_queries)
        keys, values = tokens[0:2 * pairs:2], tokens[1:2 * pairs:2]
        assert len(set(keys)) == pairs and np.all((keys >= 1) & (keys < 256))
        assert len(set(values)) == pairs and np.all((values >= 256) & (values < 512))
        bound = dict(zip(keys, values))
        queried = np.flatnonzero(labels >= 0)
        assert len(queried) == pairs and np.all(queried >= 2 * pairs)
        assert np.all((queried - 2 * pairs) % 2 == 0)  # zoology's even offsets
        assert sorted(tokens[queried]) == sorted(keys)  # each key asked once
        np.testing.assert_array_equal(labels[queried], [bound[k] for k in tokens[queried]])
        if not random_non_queries:
          rest = np.ones(length, bool)
          rest[:2 * pairs], rest[queried] = False, False
          assert np.all(tokens[rest] == 0)


def test_mqar_gaps_follow_the_power_law():
  """Short gaps dominate (a = 0.01): most queries come soon after the pairs."""
  rng = np.random.default_rng(1)
  gaps = [(np.flatnonzero(mqar.example(rng, 512, 256, 4)[1] >= 0) - 8) // 2
          for _ in range(300)]
  gaps = np.concatenate(gaps)
  assert np.mean(gaps < 10) > 0.3 and gaps.max() > 60


def test_mqar_splits_and_checks(data_dir):
  task = data.load_task(_mqar_config("softmax", data_dir).data)
  assert set(task.sources) == {"train", "validation", "test_L16_N2", "test_L32_N8"}
  assert task.test_splits == ("test_L16_N2", "test_L32_N8")
  for split, (length, pairs) in (("test_L16_N2", (16, 2)), ("test_L32_N8", (32, 8))):
    e = task.sources[split][0]
    assert len(e["inputs"]) == length and (e["labels"] >= 0).sum() == pairs
  with pytest.raises(ValueError, match=r"config.data.mqar_test_pairs: .*\(32, 9\)"):
    checks.check_config(_mqar_config("softmax", data_dir, **{
        "data.mqar_test_pairs": ((32, 9),)}))
  with pytest.raises(ValueError, match=r"config.model.shape='encoder'.*'mqar' trains"):
    checks.check_config(_mqar_config("softmax", data_dir, **{"model.shape": "encoder"}))


@pytest.mark.parametrize("variant", ["softmax", "gla"])
def test_two_steps_of_the_decoder_only_lm_on_mqar(variant, data_dir, tmp_path):
  if variant not in attention_zoo.names():
    pytest.fail(f"{variant} is not registered")
  final = train.train_and_evaluate(_mqar_config(variant, data_dir), str(tmp_path))
  assert {"test_L16_N2_accuracy", "test_L32_N8_accuracy", "test_accuracy",
          "validation_accuracy", "state_size"} <= set(final)
  logged = [r for r in metrics.read(str(tmp_path)) if "train_loss" in r]
  assert [r["step"] for r in logged] == [1, 2] and "train_accuracy" in logged[0]
  # The pooled accuracy is the per-split accuracies weighted by their query counts (2, 8).
  pooled = (2 * final["test_L16_N2_accuracy"] + 8 * final["test_L32_N8_accuracy"]) / 10
  assert final["test_accuracy"] == pytest.approx(pooled)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_two_steps_of_the_encoder_only_classifier_on_listops(pooling, data_dir, tmp_path):
  c = tiny.config("linear", data_dir, **{"data.task": "listops", "data.min_length": 3,
                                         "data.max_length": 20, "model.pooling": pooling})
  c.decode_splits = ("validation", "test")
  final = train.train_and_evaluate(c, str(tmp_path))
  assert {"test_accuracy", "test_loss", "validation_accuracy"} <= set(final)
  assert 0 <= final["test_accuracy"] <= 1


def test_a_seq2seq_task_trains_as_a_language_model(data_dir, tmp_path):
  final = train.train_and_evaluate(tiny.config("softmax", data_dir, **{
      "model.shape": "decoder"}), str(tmp_path))
  assert {"test_accuracy", "test_exact_accuracy", "test_long_exact_accuracy"} <= set(final)


def test_seq2seq_as_lm_scores_the_targets_and_eos(data_dir):
  task = data.load_task(tiny.config(data_dir=data_dir).data)
  e = data.encode(task, {"inputs": np.array([0, 4]), "targets": np.array([5, 1, 2])}, "train",
                  "decoder")
  n = sum(task.lengths["train"])
  np.testing.assert_array_equal(e["tokens"], np.pad([3, 7, data.BOS, 8, 4, 5], (0, n - 6)))
  np.testing.assert_array_equal(e["labels"],
                                np.pad([-1, -1, 8, 4, 5, data.EOS], (0, n - 6), constant_values=-1))
  assert e["lengths"] == 6


def _model(shape, variant="softmax", **kwargs):
  cfg = TransformerConfig(vocab_size=20, d_model=32, num_heads=4, num_kv_heads=2, d_ff=64,
                          shape=shape, attention=variant, attention_options=OPTIONS,
                          num_classes=5, **kwargs)
  return Transformer(cfg, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("positions", ["sinusoidal", "rope"])
@pytest.mark.parametrize("variant", attention_zoo.registry.names(decodes=True))
def test_decoder_only_decoding_equals_recomputation(variant, positions):
  model = _model("decoder", variant, positions=positions)
  tokens = jnp.asarray(np.random.default_rng(0).integers(3, 20, (2, 9)), jnp.int32)
  full = model.language_model(tokens, jnp.array([9, 9], jnp.int32))
  caches, steps = model.init_caches(2, 9), []
  for t in range(9):
    logits, caches = model.decode_step(tokens[:, t:t + 1], t, caches)
    steps.append(logits)
  np.testing.assert_allclose(jnp.stack(steps, axis=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pooling,positions", [("cls", "sinusoidal"), ("mean", "rope")])
def test_classifier_ignores_padding(pooling, positions):
  model = _model("encoder", pooling=pooling, positions=positions)
  tokens = jnp.asarray(np.random.default_rng(0).integers(3, 20, (1, 8)), jnp.int32)
  lengths = jnp.array([5], jnp.int32)
  other = tokens.at[:, 5:].set(7)  # different padding, same example
  np.testing.assert_allclose(model.classify(tokens, lengths), model.classify(other, lengths),
                             atol=1e-6)
  assert model.classify(tokens, lengths).shape == (1, 5)


def test_state_sizes_follow_the_formulas():
  """Per layer: attention 2·L·K·H (its KV cache), local 2·(w+1)·K·H, gated H·H per head."""
  L, layers, N, K, H = 64, 2, 4, 2, 8
  sizes = {v: _model("decoder", v, num_decoder_layers=layers).state_size(L)
           for v in attention_zoo.registry.names(decodes=True)}
  assert sizes["softmax"] == sizes["chunked"] == layers * 2 * L * K * H
  assert sizes["local"] == layers * 2 * (3 + 1) * K * H
  for gated in attention_zoo.registry.names(causal_only=True):
    assert sizes[gated] == layers * N * H * H, gated


ALIBI = [n for n in attention_zoo.registry.names(decodes=True)
         if "score_mod" not in attention_zoo.registry.entry(n).refuses]


@pytest.mark.parametrize("variant,positions", [(v, "alibi") for v in ALIBI] +
                         [("softmax", "learned"), ("gla", "learned")])
def test_learned_and_alibi_decoding_equals_recomputation(variant, positions):
  """ALiBi decodes at the true positions of the query and of every cached key (local's
  rolling cache included); learned positions add the table's row of the step."""
  test_decoder_only_decoding_equals_recomputation(variant, positions)


@pytest.mark.parametrize("positions", ["learned", "alibi"])
def test_classifier_with_learned_and_alibi_positions_ignores_padding(positions):
  test_classifier_ignores_padding("cls", positions)


def test_alibi_needs_score_mod_and_learned_positions_have_a_limit():
  refusing = [n for n in attention_zoo.names()
              if "score_mod" in attention_zoo.registry.entry(n).refuses]
  with pytest.raises(ValueError, match="alibi positions need a variant that takes score_mod"):
    _model("decoder", refusing[0], positions="alibi")
  model = _model("decoder", positions="learned", max_positions=8)
  with pytest.raises(ValueError, match="9 positions exceed the table's max_positions=8"):
    model.language_model(jnp.ones((1, 9), jnp.int32), jnp.array([9], jnp.int32))
  with pytest.raises(ValueError, match="decoding 9 positions exceeds"):
    model.init_caches(1, 9)
