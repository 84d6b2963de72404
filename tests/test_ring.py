"""Ring attention over 2 and 8 CPU devices equals softmax, forward and gradients (with
segment ids too: the key ids travel around the ring with their block; the residual, each
row's log-sum-exp, the soft cap and sinks, with their gradients)."""

import jax
import pytest

import attention_zoo
from tests import devices

RING_VS_SOFTMAX = """
import json
import jax, jax.numpy as jnp, numpy as np
import attention_zoo

B, T, S, N, K, H = 2, 24, 40, 4, 2, 8   # GQA; S != T; blocks of 3..12 and 5..20 rows
rng = np.random.default_rng(0)
q = jnp.asarray(rng.normal(size=(B, T, N, H)), jnp.float32)
k, v = (jnp.asarray(rng.normal(size=(B, S, K, H)), jnp.float32) for _ in range(2))
lengths = dict(query_seq_lengths=jnp.array([T, 17], jnp.int32),
               key_value_seq_lengths=jnp.array([13, 35], jnp.int32))
ids = tuple(jnp.asarray(np.sort(rng.integers(0, 4, (B, n)), 1), jnp.int32) for n in (T, S))
cases = {"full": {}, "causal": dict(is_causal=True),
         "padded causal": dict(is_causal=True, **lengths),
         "padded window": dict(local_window_size=(5, 2), **lengths),
         "segments": dict(is_causal=True, segment_ids=ids),
         "residual": dict(is_causal=True, return_residual=True, **lengths)}

def loss(fn, kwargs):  # rows with no key have residual -inf
  return lambda q, k, v: sum(jnp.sum(jnp.sin(jnp.where(jnp.isfinite(x), x, 0.0)))
                             for x in jax.tree.leaves(fn(q, k, v, **kwargs)))


def difference(a, b):  # the largest |a - b|, -inf == -inf counted equal; numpy: nothing compiled
  a, b = np.asarray(a), np.asarray(b)
  with np.errstate(invalid="ignore"):
    return float(np.max(np.where(a == b, 0.0, np.abs(a - b))))

# Gradients are taken under jit, as training takes them: one program per case, where
# differentiating op by op compiled ~250 small programs (half this test's time). Ring's
# forward is called outside jit, as a user may call it; the references are jitted whole.
softmax = attention_zoo.get("softmax")
references = {case: jax.jit(lambda q, k, v, kwargs=kwargs: (
                  softmax(q, k, v, **kwargs), jax.grad(loss(softmax, kwargs), (0, 1, 2))(q, k, v)))(
                      q, k, v)
              for case, kwargs in cases.items()}
errors = {}
# the fewest and most devices and both axis types, not their product (compiling each case is
# the cost: the suite's time on 2 cores)
for devices, axis_type in ((2, "Explicit"), (8, "Auto")):
  mesh = jax.make_mesh((devices,), ("sequence",), devices=jax.devices()[:devices],
                       axis_types=(getattr(jax.sharding.AxisType, axis_type),))
  for case, kwargs in cases.items():
    with jax.set_mesh(mesh):
      ring = attention_zoo.get("ring")
      out = ring(q, k, v, **kwargs)
      grads = jax.jit(jax.grad(loss(ring, kwargs), (0, 1, 2)))(q, k, v)
    errors[f"{devices} {axis_type} {case}"] = [
        difference(a, b) for a, b in
        zip(jax.tree.leaves((out, grads)), jax.tree.leaves(references[case]))]

# The soft cap and sinks (self-attention: T == S), with the gradient of the sinks, made under
# the mesh as a model makes them.
q_k_v = (q, k[:, :T], v[:, :T])
sink_cases = {"cap and sinks": lambda x: dict(is_causal=True, logit_soft_cap=2.0, sinks=x,
                                              key_value_seq_lengths=jnp.array([13, 20])),
              "sinks and residual": lambda x: dict(sinks=x, return_residual=True,
                                                   segment_ids=ids[0])}
for devices, axis_type in ((2, "Auto"), (8, "Explicit")):
  mesh = jax.make_mesh((devices,), ("sequence",), devices=jax.devices()[:devices],
                       axis_types=(getattr(jax.sharding.AxisType, axis_type),))
  with jax.set_mesh(mesh):
    x = jnp.asarray(rng.normal(size=(N,)), jnp.float32)
  for case, kwargs in sink_cases.items():
    def sink_loss(fn):
      return lambda q, k, v, x: sum(jnp.sum(jnp.sin(jnp.where(jnp.isfinite(y), y, 0.0)))
                                    for y in jax.tree.leaves(fn(q, k, v, **kwargs(x))))
    with jax.set_mesh(mesh):
      ring = attention_zoo.get("ring")
      out = ring(*q_k_v, **kwargs(x))
      grads = jax.jit(jax.grad(sink_loss(ring), (0, 1, 2, 3)))(*q_k_v, x)
    softmax, x_here = attention_zoo.get("softmax"), jnp.asarray(np.asarray(x))  # off the mesh
    ref, ref_grads = jax.jit(lambda q, k, v, x: (
        softmax(q, k, v, **kwargs(x)), jax.grad(sink_loss(softmax), (0, 1, 2, 3))(q, k, v, x)))(
            *q_k_v, x_here)
    errors[f"{devices} {axis_type} {case}"] = [
        difference(a, b) for a, b in
        zip(jax.tree.leaves((out, grads)), jax.tree.leaves((ref, ref_grads)))]
print(json.dumps(errors))
"""


@pytest.mark.slow
def test_ring_equals_softmax_on_2_and_8_devices():
  errors = devices.run(8, RING_VS_SOFTMAX)
  assert len(errors) == 2 * 6 + 2 * 2
  for case, differences in errors.items():
    assert max(differences) < 1e-5, (case, differences)


def test_ring_needs_its_mesh_axis_and_divisible_lengths():
  q = k = v = jax.numpy.zeros((1, 6, 2, 4))
  with pytest.raises(ValueError, match=r"ring: the current mesh has no axis 'sequence'"):
    attention_zoo.get("ring")(q, k, v)
  mesh = jax.make_mesh((1,), ("sequence",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    with pytest.raises(NotImplementedError, match="ring attention does not support mask"):
      attention_zoo.get("ring")(q, k, v, mask=jax.numpy.ones((1, 1, 6, 6), bool))
  with pytest.raises(ValueError, match=r"axis_name must be a mesh axis name"):
    attention_zoo.get("ring", axis_name="")


def test_ring_lengths_must_split_over_the_devices():
  code = """
    import json, jax, jax.numpy as jnp, attention_zoo
    mesh = jax.make_mesh((4,), ("sequence",), axis_types=(jax.sharding.AxisType.Auto,))
    try:
      with jax.set_mesh(mesh):
        attention_zoo.get("ring")(*(jnp.zeros((1, 6, 2, 4)),) * 3)
    except ValueError as e:
      print(json.dumps(str(e)))
  """
  message = devices.run(4, code)
  assert "T=6 and key length S=6 must be multiples of the 4 devices" in message
