"""logit_soft_cap (Gemma 2) and attention sinks (StreamingLLM, gpt-oss) against their formula
(tests/oracle.softmax_formula), forward and gradients (the sinks' and a bias's included), in
every variant that takes them; the others refuse them (tests/test_contract.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_zoo
from attention_zoo import registry
from tests import oracle

TAKING = [n for n in attention_zoo.names()
          if not {"logit_soft_cap", "sinks"} & set(registry.entry(n).refuses)]
OPTIONS = {"chunked": dict(query_chunk_size=4, key_chunk_size=3),
           "local": dict(block_size=4, local_window_size=(3, 2))}
B, T, S, N, K, H = 2, 13, 11, 4, 2, 8


def test_the_softmax_family_takes_them():
  assert {"softmax", "chunked", "local"} <= set(TAKING)


@pytest.mark.parametrize("name", TAKING)
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("cap, with_sinks", [(5.0, False), (None, True), (2.0, True)])
def test_against_the_formula(name, is_causal, cap, with_sinks):
  """With a bias (and its gradient) where the variant takes one (ring does not)."""
  rng = np.random.default_rng(0)
  q = jnp.asarray(3 * rng.normal(size=(B, T, N, H)), jnp.float32)  # logits past the cap
  k, v = (jnp.asarray(rng.normal(size=(B, S, K, H)), jnp.float32) for _ in range(2))
  bias = jnp.asarray(rng.normal(size=(1, N, T, S)), jnp.float32)
  biased = "bias" not in registry.entry(name).refuses
  if not biased:
    bias = jnp.zeros_like(bias)  # the formula's; the variant gets none (below)
  sinks = jnp.asarray(rng.normal(size=(N,)), jnp.float32) if with_sinks else None
  lengths = jnp.array([S, 4], jnp.int32)
  window = OPTIONS.get(name, {}).get("local_window_size")
  allowed = oracle.allowed(B, N, T, S, is_causal=is_causal, local_window_size=window,
                           key_value_seq_lengths=np.asarray(lengths))
  attend = attention_zoo.get(name, **OPTIONS.get(name, {}))
  cot = jnp.asarray(rng.normal(size=q.shape), jnp.float32)

  def got(q, k, v, bias, sinks):
    return attend(q, k, v, bias if biased else None, is_causal=is_causal, logit_soft_cap=cap,
                  sinks=sinks, key_value_seq_lengths=lengths)

  def want(q, k, v, bias, sinks):
    return oracle.softmax_formula(q, k, v, bias, allowed, logit_soft_cap=cap, sinks=sinks)

  np.testing.assert_allclose(got(q, k, v, bias, sinks), want(q, k, v, bias, sinks), atol=2e-6,
                             rtol=2e-5)
  argnums = (0, 1, 2) + ((3,) if biased else ()) + ((4,) if with_sinks else ())
  grads = [jax.grad(lambda *a, f=f: jnp.sum(f(*a) * cot), argnums)(q, k, v, bias, sinks)
           for f in (got, want)]
  for g, w in zip(*grads):
    np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-4)


def test_sinks_take_weight_and_caps_bound_logits():
  """A large sink takes nearly all the weight (the output goes to 0); a tiny cap makes
  every allowed key nearly equal (the output goes to the mean of the values)."""
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(rng.normal(size=(1, 5, 2, 4)), jnp.float32) for _ in range(3))
  attend = attention_zoo.get("chunked", query_chunk_size=2, key_chunk_size=2)
  assert float(jnp.abs(attend(q, k, v, sinks=jnp.full((2,), 30.0))).max()) < 1e-9
  np.testing.assert_allclose(attend(q, k, v, logit_soft_cap=1e-6),
                             jnp.broadcast_to(v.mean(1, keepdims=True), v.shape), atol=1e-5)


def test_bad_values_and_refusals_name_the_argument():
  q, k, v = (jnp.zeros((1, 3, 2, 4)) for _ in range(3))
  with pytest.raises(ValueError, match=r"^chunked: logit_soft_cap must be .* got -1"):
    attention_zoo.get("chunked", logit_soft_cap=-1.0)
  with pytest.raises(ValueError, match=r"^softmax: sinks must be a float array of shape "
                                       r"\[N\] = \(2,\).*\(3,\)"):
    attention_zoo.get("softmax")(q, k, v, sinks=jnp.zeros(3))
  with pytest.raises(NotImplementedError, match="^linear attention does not support "
                                                "logit_soft_cap"):
    attention_zoo.get("linear", logit_soft_cap=5.0)
