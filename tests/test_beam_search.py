"""Beam search against greedy decoding and against the model's own sequence scores."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attention_zoo
from experiments import decode
from experiments.model import Transformer, TransformerConfig
from tests import tiny

B, S, T = 3, 7, 6


def _setup(variant):
  cfg = TransformerConfig(vocab_size=12, d_model=32, num_heads=4, num_kv_heads=2, d_ff=64,
                          attention=variant, **tiny.model_roles(variant),
                          attention_options=(("local", (("local_window_size", 2),)),))
  graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(1)))
  rng = np.random.default_rng(0)
  batch = dict(inputs=jnp.asarray(rng.integers(3, 12, (B, S)), jnp.int32),
               input_lengths=jnp.array([7, 4, 1], jnp.int32),
               targets=jnp.zeros((B, T), jnp.int32))
  return graphdef, params, batch


@pytest.mark.parametrize("variant", attention_zoo.names())
def test_beam_of_one_is_greedy(variant):
  graphdef, params, batch = _setup(variant)
  model = nnx.merge(graphdef, params)
  memory = model.encode(batch["inputs"], batch["input_lengths"])
  caches, token, expected = model.init_caches(B, T), jnp.ones((B, 1), jnp.int32), []
  for t in range(T):  # greedy by hand, one step at a time
    logits, caches = model.decode_step(token, t, caches, memory, batch["input_lengths"])
    token = logits.argmax(-1)[:, None].astype(jnp.int32)
    expected.append(token[:, 0])
  expected = np.stack(expected, 1)
  ended = np.cumsum(expected == 2, axis=1) - (expected == 2) > 0  # after EOS: padding
  np.testing.assert_array_equal(decode.greedy(graphdef, params, batch),
                                np.where(ended, 0, expected))


@pytest.mark.parametrize("variant", ["softmax", "linear"])
def test_wider_beams_find_sequences_at_least_as_likely(variant):
  """Without a length penalty, the best of 4 beams scores at least the greedy sequence on
  every row here, and more on some. (Beam search can prune the greedy path, so this is a
  property of this model and these inputs, checked as a regression, not a theorem.)"""
  graphdef, params, batch = _setup(variant)
  score = functools.partial(decode.sequence_log_prob, graphdef, params, batch)
  greedy = score(decode.greedy(graphdef, params, batch))
  wide = score(decode.beam_search(graphdef, params, batch, beam_size=4, length_penalty=0.0))
  assert bool(jnp.all(wide >= greedy - 1e-5)), (wide, greedy)
  assert bool(jnp.any(wide > greedy + 1e-3)), "the beams never beat greedy: a vacuous test"
