"""segment_ids: packed sequences attend only within their own segment, in every variant that
takes them (the others refuse them: tests/test_contract.py): the recurrences restart their
state at each segment, in the chunkwise form and token by token; chunked skips the blocks
that no segment spans."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_zoo
from attention_zoo import chunked, deltanet, gated_deltanet, gla, registry, retention
from tests import oracle

TAKING = [n for n in attention_zoo.names() if "segment_ids" not in registry.entry(n).refuses]
# Packed lengths and block sizes that none of them is a multiple of. The recurrences' chunks
# of 8 then hold several boundaries (the first chunk), and a run that starts in one chunk
# (the second) and goes on in the next: its state restarts there and is read after it.
LENGTHS = [3, 1, 2, 5, 9, 3]
OPTIONS = {"chunked": dict(query_chunk_size=8, key_chunk_size=5), "local": dict(block_size=4),
           "linear": dict(chunk_size=8),
           "retention": dict(chunk_size=8), "gla": dict(chunk_size=8, sub_chunk_size=2),
           "deltanet": dict(chunk_size=8), "gated_deltanet": dict(chunk_size=8)}
RECURRENCES = {m.NAME: m for m in (retention, gla, deltanet, gated_deltanet)}
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


def test_every_exact_variant_and_recurrence_takes_segment_ids():
  assert {"softmax", "chunked", "local", *RECURRENCES} <= set(TAKING)


# linear takes segment_ids in its causal form only (a restarting state).
CASES = [(n, c) for n in TAKING for c in (False, True)
         if c or not (registry.entry(n).causal_only or n == "linear")]


@pytest.mark.parametrize("name,is_causal", CASES)
def test_packed_equals_each_sequence_alone(name, is_causal):
  """Forward and gradients (of q, k, v and the per-token gates and beta) of a packed row
  equal each sequence run on its own (lengths that are no multiple of any block size): the
  sequences alone are the rows of one batch, each padded to the longest by its lengths."""
  rng = np.random.default_rng(0)
  ids, q, k, v, pieces = _packed(rng, LENGTHS)
  k = oracle.unit_keys(name, k)
  inputs = oracle.per_token_inputs(name, q.shape, rng)
  window = dict(local_window_size=(3, 2)) if name == "local" else {}
  attend = attention_zoo.get(name, **OPTIONS.get(name, {}), **window)
  cot = rng.normal(size=q.shape).astype(np.float32)

  def run(cot, q, k, v, inputs, **call):
    def loss(q, k, v, inputs):
      return jnp.sum(attend(q, k, v, is_causal=is_causal, **inputs, **call) * cot)
    return attend(q, k, v, is_causal=is_causal, **inputs, **call), jax.grad(
        loss, (0, 1, 2, 3))(q, k, v, inputs)

  packed = (cot, q, k, v, inputs)
  out, grads = run(*packed, segment_ids=jnp.asarray(ids[None]))
  longest = max(p.stop - p.start for p in pieces)
  rows = lambda x: jnp.stack([jnp.pad(x[0, p], [(0, longest - (p.stop - p.start))] +
                                      [(0, 0)] * (x.ndim - 2)) for p in pieces])
  lengths = jnp.asarray([p.stop - p.start for p in pieces])
  alone_out, alone_grads = run(*jax.tree.map(rows, packed), query_seq_lengths=lengths,
                               key_value_seq_lengths=lengths)
  for row, piece in enumerate(pieces):
    n = piece.stop - piece.start
    np.testing.assert_allclose(out[0, piece], alone_out[row, :n], atol=2e-6, rtol=2e-5)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(alone_grads)):
      np.testing.assert_allclose(got[0, piece], want[row, :n], atol=2e-5, rtol=2e-4)


@pytest.mark.parametrize("chunk_form", ["scan", "parallel"])
@pytest.mark.parametrize("name", RECURRENCES)
def test_recurrences_restart_token_by_token_and_keep_the_last_state(name, chunk_form):
  """The chunkwise form (both, chunkwise.py) with segments equals the token-by-token
  recurrence with resets (which restarts before each new id), final state included: the one
  after the last key, padding past the key length being identity steps; the rows of a run
  that starts in the padding attend no key: zeros."""
  rng = np.random.default_rng(3)
  ids, q, k, v, _ = _packed(rng, [5, 9, 2, 14])
  ids[-4:] = 9  # padding with its own id: no reset may happen there
  k = oracle.unit_keys(name, k)
  inputs = oracle.per_token_inputs(name, q.shape, rng)
  module = RECURRENCES[name]
  lengths = jnp.asarray([len(ids) - 4])
  args = dict(segment_ids=jnp.asarray(ids[None]), key_value_seq_lengths=lengths, **inputs)
  out, state = module.chunkwise_with_state(q, k, v, **args, **OPTIONS[name],
                                            chunk_form=chunk_form)
  want_out, want_state = module.recurrent_scan(q, k, v, **args)
  np.testing.assert_array_equal(out[:, -4:], 0.0)
  assert np.all(np.asarray(out[:, -5]) != 0.0)  # the last key's run reads its state
  np.testing.assert_allclose(out, want_out, atol=2e-6, rtol=2e-5)
  np.testing.assert_allclose(state["state"], want_state["state"], atol=2e-6, rtol=2e-5)
  _, alone = module.recurrent_scan(*(x[:, 16:26] for x in (q, k, v)),
                                   **{n: x[:, 16:26] for n, x in inputs.items()})
  np.testing.assert_allclose(state["state"], alone["state"], atol=2e-6, rtol=2e-5)


@pytest.mark.parametrize("feature_map", ["relu", "favor"])
def test_linear_restarts_with_every_feature_map(feature_map):
  """relu and favor (halved down to single rows) as elu in the test above: forward only."""
  rng = np.random.default_rng(5)
  ids, q, k, v, pieces = _packed(rng, LENGTHS)
  attend = attention_zoo.get("linear", feature_map=feature_map, num_features=16, chunk_size=8)
  out = attend(q, k, v, is_causal=True, segment_ids=jnp.asarray(ids[None]))
  for piece in pieces:
    np.testing.assert_allclose(out[:, piece], attend(q[:, piece], k[:, piece], v[:, piece],
                                                     is_causal=True), atol=2e-6, rtol=2e-5)


def test_linear_refuses_segments_it_cannot_restart():
  ids, q, k, v, _ = _packed(np.random.default_rng(6), [3, 4])
  linear = attention_zoo.get("linear")
  with pytest.raises(NotImplementedError, match=r"^linear: segment_ids needs is_causal=True "
                                                r".*got is_causal=False and one array"):
    linear(q, k, v, segment_ids=jnp.asarray(ids[None]))


def test_recurrences_refuse_distinct_query_and_key_ids():
  rng = np.random.default_rng(4)
  ids, q, k, v, _ = _packed(rng, [3, 4])
  pair = (jnp.asarray(ids[None]), jnp.asarray(ids[None]))
  with pytest.raises(NotImplementedError, match=r"^retention: segment_ids needs is_causal=True "
                                                r"and one int array \[B, T\] that queries and "
                                                r"keys share .* got is_causal=True and a "
                                                r"\(query, key\) pair"):
    attention_zoo.get("retention")(q, k, v, is_causal=True, segment_ids=pair)


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
