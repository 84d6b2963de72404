"""Ring attention: softmax attention with the sequence split over a mesh axis (Liu et al. 2023).

What it computes is `softmax`; how: each of the P devices on mesh axis `axis_name` holds
T/P queries and S/P keys and values of every sequence. The key/value blocks travel around
the ring (`lax.ppermute`) for P steps, each device folding every visiting block into its
queries' online softmax. The backward pass (a `jax.custom_vjp`) is a second ring that
recomputes each block's probabilities from the saved log-sum-exp: dq accumulates where it
is, dk and dv travel with their block and are home after P steps. A block that causality
or the window rules out entirely is skipped (`lax.cond`), forward and backward. Per device
and step the memory is one (T/P)×(S/P) block, never T×S. `logit_soft_cap` and `sinks` as in
`chunked` (the sinks enter the ring replicated; their gradient is summed over the devices).
score_mod and mask_mod are refused: a function traced inside the ring cannot read an array
it closes over that was made under the (non-manual) mesh, which is where models make them.

Runs under a mesh (`jax.set_mesh(mesh)`) that has the axis; other mesh axes shard the batch.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from attention_zoo import masking, online_softmax, softmax, validation

NAME = "ring"


@validation.call_forms(NAME)
def ring_attention(query, key, value, bias=None, mask=None, *, scale=None, is_causal=False,
                   query_seq_lengths=None, key_value_seq_lengths=None, local_window_size=None,
                   segment_ids=None, logit_soft_cap=None, sinks=None, return_residual=False,
                   axis_name="sequence"):
  """Softmax attention, T and S split over mesh axis `axis_name`; rows with no key give zeros.
  `segment_ids` as in `softmax`: the key ids travel around the ring with their block, and a
  block whose ids share none with this device's queries is skipped. `return_residual` as in
  `softmax` (differentiable).

  Dense `mask` and `bias` are not supported (they would need the same split): use the
  lengths, `is_causal` and `local_window_size`, or `softmax`/`chunked`.
  """
  dims = validation.check_inputs(NAME, query, key, value, bias, mask,
                                 query_seq_lengths=query_seq_lengths,
                                 key_value_seq_lengths=key_value_seq_lengths)
  validation.unsupported(NAME, bias=bias, mask=mask)
  window = validation.normalize_window(NAME, local_window_size)
  scale = validation.default_scale(NAME, scale, dims.H)
  mesh = jax.sharding.get_abstract_mesh()
  if axis_name not in mesh.axis_names:
    raise ValueError(f"{NAME}: the current mesh has no axis {axis_name!r} (axes: "
                     f"{mesh.axis_names}); call it under jax.set_mesh(mesh) with a mesh that has "
                     f"one, or choose the axis with attention_zoo.get('ring', axis_name=...)")
  devices = mesh.shape[axis_name]
  if dims.T % devices or dims.S % devices:
    raise ValueError(f"{NAME}: query length T={dims.T} and key length S={dims.S} must be "
                     f"multiples of the {devices} devices of mesh axis {axis_name!r}")
  # The other mesh axes split the batch where they divide it (as in the training loop);
  # otherwise each device of the ring holds every sequence.
  others = tuple(a for a in mesh.axis_names if a != axis_name and mesh.shape[a] > 1)
  batch = others if others and dims.B % math.prod(mesh.shape[a] for a in others) == 0 else None
  lengths = [x if x is not None else jnp.full((dims.B,), n, jnp.int32)
             for x, n in ((query_seq_lengths, dims.T), (key_value_seq_lengths, dims.S))]
  # Without segments every position is in segment 0: one code path, nothing skipped by ids.
  ids = segment_ids or tuple(jnp.zeros((dims.B, n), jnp.int32) for n in (dims.T, dims.S))
  plan = _Ring(axis_name, devices, dims.K, scale, is_causal, window, logit_soft_cap)
  sequence_spec, lengths_spec = P(batch, axis_name), P(batch)
  specs = (sequence_spec,) * 3 + (lengths_spec,) * 2 + (sequence_spec,) * 2
  args = (query, key, value, *lengths, *ids)
  if jax.sharding.AxisType.Explicit in mesh.axis_types:  # sharding in types: reshard first
    args = tuple(jax.reshard(x, spec) for x, spec in zip(args, specs))
    sinks = None if sinks is None else jax.reshard(sinks, P())
  specs += (None if sinks is None else P(),)  # replicated: every device's rows use them
  args += (sinks,)
  run = jax.shard_map(functools.partial(_ring, plan), mesh=mesh, in_specs=specs,
                      out_specs=(sequence_spec, sequence_spec), check_vma=False)
  out, lse = run(*args)
  if not return_residual:
    return out.astype(query.dtype)
  return out.astype(query.dtype), jnp.where(lse == jnp.inf, -jnp.inf, lse).astype(key.dtype)


class _Ring:
  """The static facts of one ring: axis, size, heads, scale, masking rule and soft cap."""

  def __init__(self, axis, size, K, scale, is_causal, window, cap=None):
    self.axis, self.size, self.K = axis, size, K
    self.scale, self.is_causal, self.window, self.cap = scale, is_causal, window, cap

  def pass_on(self, *blocks):
    """Every device sends its blocks to the next on the ring."""
    perm = [(i, (i + 1) % self.size) for i in range(self.size)]
    return jax.lax.ppermute(blocks, self.axis, perm)

  def positions(self, step, tq, tk):
    """Global positions of this device's queries and of the key block visiting at `step`."""
    me = jax.lax.axis_index(self.axis)
    owner = (me - step) % self.size  # the device whose key block we hold after `step` passes
    return me * tq + jnp.arange(tq), owner * tk + jnp.arange(tk)

  def reachable(self, q_pos, k_pos, q_ids, k_ids):
    """Can any query of this block attend any key of that block (causality, window, and
    overlapping segment id ranges in some sequence)?"""
    ok = ((q_ids.min(-1) <= k_ids.max(-1)) & (k_ids.min(-1) <= q_ids.max(-1))).any()
    if self.is_causal:
      ok &= k_pos[0] <= q_pos[-1]
    if self.window is not None:
      left, right = self.window
      ok &= (k_pos[0] <= q_pos[-1] + right) & (k_pos[-1] >= q_pos[0] - left)
    return ok

  def scores(self, q, k):
    """Scaled float32 q·k [b, K, G, tq, tk], before the cap."""
    return jnp.einsum("bkgth,bksh->bkgts", q, k, preferred_element_type=jnp.float32) * self.scale

  def modify(self, s):
    return softmax.soft_cap(s, self.cap)

  def allowed(self, q_pos, k_pos, q_len, kv_len, q_ids, k_ids):
    return masking.allowed(q_pos, k_pos, is_causal=self.is_causal, window=self.window,
                           q_len=q_len, kv_len=kv_len, segments=(q_ids, k_ids))


def _ring(plan, query, key, value, q_len, kv_len, q_ids, kv_ids, sinks):
  """(out [b, t, N, H], lse [b, t, N]: +inf on rows with no key) of this device's rows."""
  q, k, v = softmax.to_blocks_layout(query, key, value, plan.K)
  out, lse = _attention(plan, q, k, v, q_len, kv_len, q_ids, kv_ids, sinks)
  return softmax.from_blocks_layout(out), softmax.residual_layout(lse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(plan, q, k, v, q_len, kv_len, q_ids, kv_ids, sinks):
  return _forward(plan, q, k, v, q_len, kv_len, q_ids, kv_ids, sinks)


def _visit(plan, q, k_blk, step, q_len, kv_len, q_ids, k_ids):
  """The block visiting at `step`: (its allowed pairs, whether it can hold one: else it is
  skipped)."""
  q_pos, k_pos = plan.positions(step, q.shape[3], k_blk.shape[2])
  return (plan.allowed(q_pos, k_pos, q_len, kv_len, q_ids, k_ids),
          plan.reachable(q_pos, k_pos, q_ids, k_ids))


def _sink_logits(plan, sinks):
  return None if sinks is None else sinks.astype(jnp.float32).reshape(1, plan.K, -1, 1)


def _forward(plan, q, k, v, q_len, kv_len, q_ids, kv_ids, sinks):
  """This device's q [b,K,G,tq,H] against every device's k, v [b,K,tk,H] (and the key
  ids [b, tk] travelling with them) -> out float32, lse; `sinks` [N] or None."""

  def step(i, carry):
    k_blk, v_blk, ids_blk, softmax_carry = carry
    ok, reachable = _visit(plan, q, k_blk, i, q_len, kv_len, q_ids, ids_blk)
    logits = lambda: jnp.where(ok, plan.modify(plan.scores(q, k_blk)), -jnp.inf)
    softmax_carry = jax.lax.cond(
        reachable, lambda c: online_softmax.fold(c, logits(), v_blk), lambda c: c,
        softmax_carry)
    return (*plan.pass_on(k_blk, v_blk, ids_blk), softmax_carry)

  *_, carry = jax.lax.fori_loop(0, plan.size, step, (k, v, kv_ids, online_softmax.init(q)))
  return online_softmax.finish(carry, _sink_logits(plan, sinks))


def _attention_fwd(plan, q, k, v, q_len, kv_len, q_ids, kv_ids, sinks):
  out, lse = _forward(plan, q, k, v, q_len, kv_len, q_ids, kv_ids, sinks)
  return (out, lse), (q, k, v, q_len, kv_len, q_ids, kv_ids, sinks, out, lse)


def _attention_bwd(plan, residuals, cotangents):
  """Per device: dq of its rows, dk and dv of every block (sent home with it), and its
  rows' part of the sinks' gradient (shard_map sums it over the devices)."""
  q, k, v, q_len, kv_len, q_ids, kv_ids, sinks, out, lse = residuals
  dout, dlse = cotangents
  delta = jnp.sum(dout * out, axis=-1) - dlse  # d lse / d logits = p, as in chunked

  def step(i, carry):
    k_blk, v_blk, ids_blk, dk, dv, dq = carry
    ok, reachable = _visit(plan, q, k_blk, i, q_len, kv_len, q_ids, ids_blk)

    def fold(grads):
      dk, dv, dq = grads
      s, chain = jax.vjp(plan.modify, plan.scores(q, k_blk))
      p = jnp.where(ok, jnp.exp(s - lse[..., None]), 0.0)
      ds, dv_blk = online_softmax.logit_gradients(p, dout, delta, v_blk)
      dq_blk, dk_blk = online_softmax.qk_gradients(chain(ds)[0], q, k_blk)  # through the cap
      return dk + dk_blk, dv + dv_blk, dq + dq_blk

    dk, dv, dq = jax.lax.cond(reachable, fold, lambda g: g, (dk, dv, dq))
    # dk, dv travel with their block (and its ids)
    k_blk, v_blk, ids_blk, dk, dv = plan.pass_on(k_blk, v_blk, ids_blk, dk, dv)
    return k_blk, v_blk, ids_blk, dk, dv, dq

  zeros = lambda x: jnp.zeros(x.shape, jnp.float32)
  *_, dk, dv, dq = jax.lax.fori_loop(0, plan.size, step,
                                     (k, v, kv_ids, zeros(k), zeros(v), zeros(q)))
  dsinks = None
  if sinks is not None:  # d lse / d sink = its weight exp(sink - lse); lse = inf: no key
    weight = jnp.exp(_sink_logits(plan, sinks) - lse)
    dsinks = -jnp.sum(weight * delta, axis=(0, 3)).reshape(-1).astype(sinks.dtype)
  return ((dq * plan.scale).astype(q.dtype), (dk * plan.scale).astype(k.dtype),
          dv.astype(v.dtype), None, None, None, None, dsinks)


_attention.defvjp(_attention_fwd, _attention_bwd)


def check_options(axis_name="sequence"):
  if not isinstance(axis_name, str) or not axis_name:
    raise ValueError(f"{NAME}: axis_name must be a mesh axis name (a str), got {axis_name!r}")
