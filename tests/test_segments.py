"""segment_ids: packed sequences attend only within their own segment, in every variant that
takes them (the others refuse them: tests/test_contract.py), and chunked skips the blocks
that no segment spans."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_zoo
from attention_zoo import chunked, registry

TAKING = [n for n in attention_zoo.names() if "segment_ids" not in registry.entry(n).refuses]
OPTIONS = {"chunked": dict(query_chunk_size=8, key_chunk_size=5), "local": dict(block_size=4)}
N, K, H = 4, 2, 8


def _packed(rng, lengths):
  """One row packing sequences of `lengths` (the rest padding, id -1... as its own segment),
  with q, k, v and per-sequence slices."""
  T = sum(lengths)
  ids = np.concatenate([np.full(n, i) for i, n in enumerate(lengths)])
  q = rng.normal(size=(1, T, N, H)).astype(np.float32)
  k, v = (rng.normal(size=(1, T, K, H)).astype(np.float32) for _ in range(2))
  starts = np.cumsum([0] + list(lengths))
  return ids, q, k, v, [slice(a, b) for a, b in zip(starts[:-1], starts[1:])]


def test_every_exact_variant_takes_segment_ids():
  assert {"softmax", "chunked", "local"} <= set(TAKING)


@pytest.mark.parametrize("name", TAKING)
@pytest.mark.parametrize("is_causal", [False, True])
def test_packed_equals_each_sequence_alone(name, is_causal):
  """Forward and gradients of a packed row equal each sequence run on its own (lengths that
  are no multiple of any block size)."""
  rng = np.random.default_rng(0)
  ids, q, k, v, pieces = _packed(rng, [7, 1, 12, 5])
  window = dict(local_window_size=(3, 2)) if name == "local" else {}
  attend = attention_zoo.get(name, **OPTIONS.get(name, {}), **window)
  cot = rng.normal(size=q.shape).astype(np.float32)

  def loss(attend, q, k, v, **ids):
    return jnp.sum(attend(q, k, v, is_causal=is_causal, **ids) * cot[:, :q.shape[1]])

  packed_out = attend(q, k, v, is_causal=is_causal, segment_ids=jnp.asarray(ids[None]))
  packed_grads = jax.grad(lambda *a: loss(attend, *a, segment_ids=jnp.asarray(ids[None])),
                          (0, 1, 2))(q, k, v)
  for piece in pieces:
    alone = attend(q[:, piece], k[:, piece], v[:, piece], is_causal=is_causal)
    np.testing.assert_allclose(packed_out[:, piece], alone, atol=2e-6, rtol=2e-5)
    sub_cot = cot[:, piece]
    grads = jax.grad(lambda q, k, v: jnp.sum(attend(q, k, v, is_causal=is_causal) * sub_cot),
                     (0, 1, 2))(q[:, piece], k[:, piece], v[:, piece])
    for got, want in zip(packed_grads, grads):
      np.testing.assert_allclose(got[:, piece], want, atol=2e-5, rtol=2e-4)


def _visits_reference(ids, bq, bk, is_causal):
  """The blocks a document mask leaves: some query and key of the block share a segment
  (and, causal, some key is at or before some query)."""
  T = len(ids)
  blocks = 0
  for i0 in range(0, T, bq):
    for j0 in range(0, T, bk):
      qi, kj = np.arange(i0, min(i0 + bq, T)), np.arange(j0, min(j0 + bk, T))
      ok = ids[qi][:, None] == ids[kj][None, :]
      if is_causal:
        ok &= kj[None, :] <= qi[:, None]
      blocks += bool(ok.any())
  return blocks


@pytest.mark.parametrize("is_causal", [False, True])
def test_chunked_skips_the_blocks_no_segment_spans(is_causal):
  """8 documents in a row of 250: chunked folds exactly the blocks that hold a pair of one
  document (counted by its forward pass), about 1/8 of the grid."""
  rng = np.random.default_rng(1)
  lengths = [31, 30, 33, 29, 32, 31, 34, 30]
  ids, q, k, v, _ = _packed(rng, lengths)
  T, bq, bk = len(ids), 16, 16
  visited = chunked.visited_blocks(q, k, v, query_chunk_size=bq, key_chunk_size=bk,
                                   is_causal=is_causal, segment_ids=jnp.asarray(ids[None]))
  plain = chunked.visited_blocks(q, k, v, query_chunk_size=bq, key_chunk_size=bk,
                                 is_causal=is_causal)
  assert visited == _visits_reference(ids, bq, bk, is_causal)
  grid = -(-T // bq) * -(-T // bk)
  assert visited <= grid / 4 and plain > 3 * visited, (visited, plain, grid)


def test_segment_ids_forms_and_errors():
  rng = np.random.default_rng(2)
  ids, q, k, v, _ = _packed(rng, [3, 4])
  attend = attention_zoo.get("chunked", query_chunk_size=4, key_chunk_size=4)
  batched = attend(q, k, v, segment_ids=jnp.asarray(ids[None]))
  pair = attend(q, k, v, segment_ids=(jnp.asarray(ids[None]), jnp.asarray(ids[None])))
  unbatched = attend(q[0], k[0], v[0], segment_ids=jnp.asarray(ids))
  np.testing.assert_array_equal(batched, pair)
  np.testing.assert_allclose(unbatched, batched[0], atol=1e-6)
  with pytest.raises(ValueError, match=r"^chunked: query segment_ids must be an int array of "
                                       r"shape \(1, 7\).*float32 \(1, 7\)"):
    attend(q, k, v, segment_ids=jnp.zeros((1, 7), jnp.float32))
  with pytest.raises(ValueError, match=r"^chunked: key segment_ids .*\(1, 5\)"):
    attend(q, k[:, :5], v[:, :5], segment_ids=jnp.asarray(ids[None]))
