"""The `implementation` option of softmax and chunked: Pallas's flash kernel (interpret mode
off a GPU) against the oracle, refusals naming the argument, `explain`, and cuDNN on a GPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_zoo
from attention_zoo import implementations, registry
from tests import oracle

NAMES = [n for n in attention_zoo.names() if "implementation" in attention_zoo.options(n)]


def _arrays(B, T, S, N, K, H, dtype=jnp.float32, seed=0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(B, T, N, H)), dtype)
  k, v = (jnp.asarray(rng.normal(size=(B, S, K, H)), dtype) for _ in range(2))
  return q, k, v


def test_softmax_and_chunked_have_it():
  assert set(NAMES) == {"softmax", "chunked"}


@pytest.mark.parametrize("name", ["chunked"])  # softmax runs the same code: one case below
@pytest.mark.parametrize("shape", [(2, 13, 13, 4, 2, 16), (1, 64, 128, 2, 1, 8),
                                   (2, 37, 37, 2, 2, 8)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_pallas_matches_the_oracle(name, shape, is_causal):
  """Forward and gradients; lengths that are no multiple of its blocks, grouped heads,
  segment ids where T = S."""
  B, T, S, N, K, H = shape
  q, k, v = _arrays(*shape)
  ids = (jnp.asarray(np.sort(np.random.default_rng(1).integers(0, 3, (B, T)), 1), jnp.int32)
         if T == S else None)
  attend = attention_zoo.get(name, implementation="pallas")
  cot = jnp.asarray(np.random.default_rng(2).normal(size=q.shape), jnp.float32)
  got = lambda q, k, v: attend(q, k, v, is_causal=is_causal, segment_ids=ids)
  want = lambda q, k, v: attention_zoo.get("softmax")(q, k, v, is_causal=is_causal,
                                                      segment_ids=ids)
  np.testing.assert_allclose(got(q, k, v), want(q, k, v), atol=2e-6, rtol=2e-5)
  grads = [jax.grad(lambda *a, f=f: jnp.sum(f(*a) * cot), (0, 1, 2))(q, k, v)
           for f in (got, want)]
  for g, w in zip(*grads):
    np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-4)


def test_softmax_takes_the_same_implementations():
  q, k, v = _arrays(2, 13, 13, 4, 2, 8)
  np.testing.assert_allclose(
      attention_zoo.get("softmax", implementation="pallas")(q, k, v, is_causal=True),
      attention_zoo.get("softmax")(q, k, v, is_causal=True), atol=2e-6, rtol=2e-5)


def test_pallas_in_half_precision():
  q, k, v = _arrays(1, 20, 20, 2, 1, 16, jnp.bfloat16)
  got = attention_zoo.get("chunked", implementation="pallas")(q, k, v, is_causal=True)
  want = oracle.reference(*(x.astype(jnp.float32) for x in (q, k, v)), is_causal=True)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(got.astype(jnp.float32), want, atol=2e-2, rtol=2e-2)


REFUSED = dict(bias=jnp.zeros((1, 1, 8, 8)), mask=jnp.ones((1, 1, 8, 8), bool),
               query_seq_lengths=jnp.array([4]), key_value_seq_lengths=jnp.array([4]),
               local_window_size=(2, 2), logit_soft_cap=5.0, sinks=jnp.zeros(2),
               return_residual=True)


@pytest.mark.parametrize("argument", sorted(REFUSED))
def test_pallas_refuses_what_its_kernel_cannot_honour(argument):
  q, k, v = _arrays(1, 8, 8, 2, 1, 8)
  with pytest.raises(NotImplementedError, match=f"^chunked attention with implementation="
                                                f"'pallas' does not support: {argument}"):
    attention_zoo.get("chunked", implementation="pallas")(q, k, v, **{argument: REFUSED[argument]})


@pytest.mark.parametrize("option", ["query_chunk_size", "key_chunk_size"])
def test_an_invalid_chunk_size_is_refused_whichever_kernel_runs(option):
  """Chunk sizes tune the xla code only; a bad one is refused before another kernel runs
  (found on a GPU, where cuDNN ran and a chunk size of 0 passed unnoticed)."""
  q, k, v = _arrays(1, 8, 8, 2, 1, 8)
  with pytest.raises(ValueError, match=f"^chunked: {option} must be a positive int"):
    registry.VARIANTS["chunked"].fn(q, k, v, implementation="pallas", **{option: 0})


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="the CPU's refusal")
def test_cudnn_off_a_gpu_refuses_and_none_chooses_xla():
  q, k, v = _arrays(1, 8, 8, 2, 1, 8, jnp.bfloat16)
  with pytest.raises(NotImplementedError, match="platform 'cpu' .*cudnn needs an NVIDIA GPU"):
    attention_zoo.get("softmax", implementation="cudnn")(q, k, v)
  assert attention_zoo.explain("chunked", q, k, v) == (
      "chunked: xla (platform 'cpu': xla is the fast one off a GPU)")
  assert attention_zoo.explain("chunked", q, k, v, implementation="pallas") == (
      "chunked: pallas (asked for by name)")
  assert attention_zoo.explain("local", q, k, v).startswith("local: its own code")
  with pytest.raises(ValueError, match="implementation must be None or one of"):
    attention_zoo.get("chunked", implementation="triton")


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN runs on an NVIDIA GPU")
@pytest.mark.parametrize("is_causal", [False, True])
def test_cudnn_matches_the_oracle_on_a_gpu(is_causal):
  q, k, v = _arrays(2, 256, 256, 4, 2, 64, jnp.bfloat16)
  lengths = jnp.array([256, 100], jnp.int32)
  got = attention_zoo.get("chunked", implementation="cudnn")(
      q, k, v, is_causal=is_causal, key_value_seq_lengths=lengths)
  want = attention_zoo.get("softmax")(q, k, v, is_causal=is_causal,
                                      key_value_seq_lengths=lengths)
  np.testing.assert_allclose(got.astype(jnp.float32), want.astype(jnp.float32), atol=2e-2)
  assert attention_zoo.explain("chunked", q, k, v, is_causal=True).startswith("chunked: cudnn")
  assert implementations.choose("chunked", None, *_dims(q, k), q.dtype,
                                dict(segment_ids=jnp.zeros((2, 256), jnp.int32)))[0] == "pallas"


def _dims(q, k):
  from attention_zoo import validation  # pylint: disable=import-outside-toplevel
  return (validation.check_inputs("chunked", q, k, k),)
