"""score_mod and mask_mod (attention_zoo/mods.py) in chunked and local against softmax with
the equivalent dense bias and mask (forward and gradients, the gradient of a captured table
included), with blocks that divide neither T nor S, and block skipping counted."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_zoo
from attention_zoo import chunked, mods, registry, softmax

TAKING = [n for n in attention_zoo.names()
          if not {"score_mod", "mask_mod"} & set(registry.entry(n).refuses)]
BLOCKWISE = [n for n in TAKING if n != "softmax"]  # softmax is the dense reference itself
OPTIONS = {"chunked": dict(query_chunk_size=4, key_chunk_size=3),
           "local": dict(block_size=4, local_window_size=(5, 3))}
B, T, N, K, H = 2, 13, 4, 2, 8


def _dense(fn, *first):
  """What a mod gives on the whole grid [B, N, T, T] (for the dense references)."""
  b, h, q, kv = softmax.grid_indices(B, K, N // K, T, T)
  return jnp.broadcast_to(fn(*first, b, h, q, kv), (B, K, N // K, T, T)).reshape(B, N, T, T)


def _arrays(seed=0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(B, T, N, H)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(B, T, K, H)), jnp.float32) for _ in range(2))
  return q, k, v, jnp.asarray(rng.normal(size=q.shape), jnp.float32)


def test_the_softmax_family_takes_them():
  assert {"softmax", "chunked", "local"} <= set(TAKING)


MASKS = {"causal": mods.causal, "sliding_window": mods.sliding_window(3, 1),
         "prefix_lm": mods.prefix_lm(jnp.array([5, 0])),
         "document": mods.document(jnp.asarray(np.repeat([[0, 1, 2]], B, 0).repeat(5, 1)[:, :T])),
         "and_masks": mods.and_masks(mods.causal, mods.sliding_window(4))}


@pytest.mark.parametrize("name", BLOCKWISE)
@pytest.mark.parametrize("mask", sorted(MASKS))
def test_mask_mod_equals_the_dense_mask(name, mask):
  q, k, v, cot = _arrays()
  mask_mod = MASKS[mask]
  dense = _dense(mask_mod)
  window = OPTIONS.get(name, {}).get("local_window_size")
  attend = attention_zoo.get(name, **OPTIONS.get(name, {}))
  reference = attention_zoo.get("softmax", local_window_size=window)
  got = lambda q, k, v: attend(q, k, v, mask_mod=mask_mod)
  want = lambda q, k, v: reference(q, k, v, mask=dense)
  np.testing.assert_allclose(got(q, k, v), want(q, k, v), atol=2e-6, rtol=2e-5)
  grads = [jax.grad(lambda *a, f=f: jnp.sum(f(*a) * cot), (0, 1, 2))(q, k, v)
           for f in (got, want)]
  for g, w in zip(*grads):
    np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-4)


def _score_mods(table):
  return {"alibi": mods.alibi(N), "soft_cap": mods.soft_cap(0.7),
          "relative_bias": mods.relative_bias(table, max_distance=8)}


@pytest.mark.parametrize("name", TAKING)
@pytest.mark.parametrize("score", ["alibi", "soft_cap", "relative_bias"])
def test_score_mod_equals_the_dense_bias(name, score):
  """Additive mods against softmax with their dense bias (the table's gradient through the
  bias built from it); the soft cap against the logit_soft_cap argument."""
  q, k, v, cot = _arrays(1)
  table = jnp.asarray(np.random.default_rng(2).normal(size=(N, 8)), jnp.float32)
  attend = attention_zoo.get(name, **OPTIONS.get(name, {}))
  window = OPTIONS.get(name, {}).get("local_window_size")
  reference = attention_zoo.get("softmax", local_window_size=window)

  def got(q, k, v, table):
    return attend(q, k, v, score_mod=_score_mods(table)[score], mask_mod=mods.causal)

  def want(q, k, v, table):
    if score == "soft_cap":
      return reference(q, k, v, logit_soft_cap=0.7, is_causal=True)
    fn = _score_mods(table)[score]
    bias = _dense(lambda b, h, qi, ki: fn(jnp.float32(0), b, h, qi, ki))
    return reference(q, k, v, bias, is_causal=True)

  np.testing.assert_allclose(got(q, k, v, table), want(q, k, v, table), atol=2e-6, rtol=2e-5)
  grads = [jax.grad(lambda *a, f=f: jnp.sum(f(*a) * cot), (0, 1, 2, 3))(q, k, v, table)
           for f in (got, want)]
  for g, w in zip(*grads):
    np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-4)
  if score == "relative_bias":
    assert float(jnp.abs(grads[0][3]).max()) > 0  # the captured table learns


def test_t5_buckets():
  """T5's bucketing: exact near zero, logarithmic, capped; bidirectional halves by sign."""
  rel = jnp.arange(-200, 201)
  one_way = mods.relative_bucket(rel, 32, 128, bidirectional=False)
  assert int(one_way[rel == 0][0]) == 0 and int(one_way[rel == -5][0]) == 5
  assert int(one_way.max()) == 31 and bool((one_way[rel > 0] == 0).all())
  both = mods.relative_bucket(rel, 32, 128)
  assert bool((both[rel > 0] >= 16).all()) and int(both[rel == -3][0]) == 3


def _visited_reference(allowed, bq, bk):
  T, S = allowed.shape[-2:]
  return sum(bool(allowed[..., i:i + bq, j:j + bk].any())
             for i in range(0, T, bq) for j in range(0, S, bk))


@pytest.mark.parametrize("mask", ["document", "prefix_lm_causal"])
def test_blocks_where_the_mask_mod_is_false_are_skipped(mask):
  """The forward pass computes exactly the blocks where the mask_mod allows some pair."""
  T_long, bq, bk = 200, 16, 16
  rng = np.random.default_rng(3)
  q, k, v = (jnp.asarray(rng.normal(size=(1, T_long, 2, 4)), jnp.float32) for _ in range(3))
  if mask == "document":
    ids = jnp.asarray(np.repeat(np.arange(8), 25)[None], jnp.int32)
    mask_mod = mods.document(ids)
  else:
    mask_mod = mods.prefix_lm(jnp.array([40]))
  b, h, qi, ki = softmax.grid_indices(1, 2, 1, T_long, T_long)
  allowed = np.asarray(jnp.broadcast_to(mask_mod(b, h, qi, ki), (1, 2, 1, T_long, T_long)))
  visited = chunked.visited_blocks(q, k, v, query_chunk_size=bq, key_chunk_size=bk,
                                   mask_mod=mask_mod)
  assert visited == _visited_reference(allowed, bq, bk)
  grid = (-(-T_long // bq)) ** 2
  assert visited < grid * (1 / 3 if mask == "document" else 0.7), (visited, grid)


def test_bad_mods_raise():
  q, k, v, _ = _arrays()
  with pytest.raises(ValueError, match="^chunked: mask_mod must be a function"):
    attention_zoo.get("chunked")(q, k, v, mask_mod=3)
  with pytest.raises(NotImplementedError, match="^linear attention does not support score_mod"):
    attention_zoo.get("linear")(q, k, v, score_mod=mods.alibi(N))
