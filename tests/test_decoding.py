"""Incremental decoding with each variant's cache equals recomputing the whole prefix."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attention_zoo
from attention_zoo import decoding, registry
from experiments.model import Transformer, TransformerConfig
from tests import oracle, tiny

B, T, N, K, H = 2, 11, 4, 2, 8
OPTIONS = {"chunked": dict(query_chunk_size=4, key_chunk_size=3),
           "local": dict(local_window_size=(3, 3), block_size=4)}
CASES = [(name, OPTIONS.get(name, {})) for name in attention_zoo.names()] + [
    ("linear", dict(feature_map="favor", num_features=16)), ("linear", dict(feature_map="relu"))]


@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_attention_steps_equal_causal_attention(name, options):
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(B, T, N, H)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(B, T, K, H)), jnp.float32) for _ in range(2))
  k, inputs = oracle.unit_keys(name, k), oracle.per_token_inputs(name, q.shape)
  full = attention_zoo.get(name, **options)(q, k, v, is_causal=True, **inputs)
  cache, steps = decoding.init(name, options, B, T, N, K, H), []
  for t in range(T):
    out, cache = decoding.step(name, options, cache, q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1],
                               **{n: x[:, t:t + 1] for n, x in inputs.items()})
    steps.append(out)
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=2e-6, rtol=2e-5)


@pytest.mark.parametrize("window", [(3, 0), (3, 5), 3])
def test_local_cache_holds_only_the_window(window):
  cache = decoding.init("local", dict(local_window_size=window), B, 100, N, K, H)
  assert cache["key"].shape == (B, 4, K, H)


@pytest.mark.parametrize("name", attention_zoo.names())
def test_transformer_decoding_equals_full_decoder(name):
  """Every role (encoder, causal decoder, cross-attention) uses the variant; inputs padded."""
  options = tuple((n, tuple(sorted(o.items()))) for n, o in OPTIONS.items())
  cfg = TransformerConfig(vocab_size=20, d_model=32, num_heads=N, num_kv_heads=K, d_ff=64,
                          attention=name, attention_options=options, **tiny.model_roles(name))
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  inputs = jnp.asarray(rng.integers(3, 20, (B, 9)), jnp.int32)
  input_lengths = jnp.array([9, 6], jnp.int32)
  decoder_inputs = jnp.asarray(rng.integers(3, 20, (B, 7)), jnp.int32)
  full = model(inputs, input_lengths, decoder_inputs, jnp.array([7, 7], jnp.int32))
  memory, caches, steps = model.encode(inputs, input_lengths), model.init_caches(B, 7), []
  for t in range(7):
    logits, caches = model.decode_step(decoder_inputs[:, t:t + 1], t, caches, memory,
                                       input_lengths)
    steps.append(logits)
  np.testing.assert_allclose(jnp.stack(steps, axis=1), full, atol=1e-5, rtol=1e-5)


def test_variant_without_decoding_form_raises(monkeypatch):
  monkeypatch.setitem(registry.VARIANTS, "local",
                      dataclasses.replace(registry.entry("local"), decoder=None))
  with pytest.raises(NotImplementedError, match="local attention has no incremental decoding"):
    decoding.init("local", dict(local_window_size=2), B, T, N, K, H)
