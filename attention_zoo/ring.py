"""Ring attention: softmax attention with the sequence split over a mesh axis (Liu et al. 2023).

What it computes is `softmax`; how: each of the P devices on mesh axis `axis_name` holds
T/P queries and S/P keys and values of every sequence. The key/value blocks travel around
the ring (`lax.ppermute`) for P steps, each device folding every visiting block into its
queries' online softmax. The backward pass (a `jax.custom_vjp`) is a second ring that
recomputes each block's probabilities from the saved log-sum-exp: dq accumulates where it
is, dk and dv travel with their block and are home after P steps. A block that causality
or the window rules out entirely is skipped (`lax.cond`), forward and backward. Per device
and step the memory is one (T/P)×(S/P) block, never T×S.

Runs under a mesh (`jax.set_mesh(mesh)`) that has the axis; other mesh axes shard the batch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from attention_zoo import masking, softmax, validation

NAME = "ring"


def ring_attention(query, key, value, bias=None, mask=None, *, scale=None, is_causal=False,
                   query_seq_lengths=None, key_value_seq_lengths=None, local_window_size=None,
                   axis_name="sequence"):
  """Softmax attention, T and S split over mesh axis `axis_name`; rows with no key give zeros.

  Dense `mask` and `bias` are not supported (they would need the same split): use the
  lengths, `is_causal` and `local_window_size`, or `softmax`/`chunked`.
  """
  dims = validation.check_inputs(NAME, query, key, value, bias, mask,
                                 query_seq_lengths=query_seq_lengths,
                                 key_value_seq_lengths=key_value_seq_lengths)
  validation.unsupported(NAME, bias=bias, mask=mask)
  window = validation.normalize_window(NAME, local_window_size)
  scale = validation.check_scale(NAME, scale)
  scale = 1.0 / np.sqrt(dims.H) if scale is None else scale
  mesh = jax.sharding.get_abstract_mesh()
  if axis_name not in mesh.axis_names:
    raise ValueError(f"{NAME}: the current mesh has no axis {axis_name!r} (axes: "
                     f"{mesh.axis_names}); call it under jax.set_mesh(mesh) with a mesh that has "
                     f"one, or choose the axis with attention_zoo.get('ring', axis_name=...)")
  devices = mesh.shape[axis_name]
  if dims.T % devices or dims.S % devices:
    raise ValueError(f"{NAME}: query length T={dims.T} and key length S={dims.S} must be "
                     f"multiples of the {devices} devices of mesh axis {axis_name!r}")
  batch_axes = tuple(a for a in mesh.axis_names if a != axis_name and mesh.shape[a] > 1)
  batch_axes = batch_axes if dims.B % max(int(np.prod([mesh.shape[a] for a in batch_axes])),
                                          1) == 0 else ()
  batch = batch_axes or None
  lengths = [x if x is not None else jnp.full((dims.B,), n, jnp.int32)
             for x, n in ((query_seq_lengths, dims.T), (key_value_seq_lengths, dims.S))]
  plan = _Ring(axis_name, devices, dims.K, scale, is_causal, window)
  sequence_spec, lengths_spec = P(batch, axis_name), P(batch)
  specs = (sequence_spec,) * 3 + (lengths_spec,) * 2
  args = (query, key, value, *lengths)
  if jax.sharding.AxisType.Explicit in mesh.axis_types:  # sharding in types: reshard first
    args = tuple(jax.reshard(x, spec) for x, spec in zip(args, specs))
  run = jax.shard_map(functools.partial(_ring, plan), mesh=mesh, in_specs=specs,
                      out_specs=sequence_spec, check_vma=False)
  return run(*args).astype(query.dtype)


class _Ring:
  """The static facts of one ring: axis, size, heads, scale and masking rule."""

  def __init__(self, axis, size, K, scale, is_causal, window):
    self.axis, self.size, self.K = axis, size, K
    self.scale, self.is_causal, self.window = scale, is_causal, window

  def pass_on(self, *blocks):
    """Every device sends its blocks to the next on the ring."""
    perm = [(i, (i + 1) % self.size) for i in range(self.size)]
    return jax.lax.ppermute(blocks, self.axis, perm)

  def positions(self, step, tq, tk):
    """Global positions of this device's queries and of the key block visiting at `step`."""
    me = jax.lax.axis_index(self.axis)
    owner = (me - step) % self.size  # the device whose key block we hold after `step` passes
    return me * tq + jnp.arange(tq), owner * tk + jnp.arange(tk)

  def reachable(self, q_pos, k_pos):
    """Can any query of this block attend any key of that block (causality, window)?"""
    ok = jnp.bool_(True)
    if self.is_causal:
      ok &= k_pos[0] <= q_pos[-1]
    if self.window is not None:
      left, right = self.window
      ok &= (k_pos[0] <= q_pos[-1] + right) & (k_pos[-1] >= q_pos[0] - left)
    return ok

  def logits(self, q, k, q_pos, k_pos, q_len, kv_len):
    """Scaled float32 logits [b, K, G, tq, tk] with -inf where attention is not allowed."""
    s = jnp.einsum("bkgth,bksh->bkgts", q, k, preferred_element_type=jnp.float32) * self.scale
    ok = masking.allowed(q_pos, k_pos, is_causal=self.is_causal, window=self.window,
                         q_len=q_len, kv_len=kv_len)
    return jnp.where(ok, s, -jnp.inf)


def _ring(plan, query, key, value, q_len, kv_len):
  return _attention(plan, *softmax.to_blocks_layout(query, key, value, plan.K), q_len, kv_len)


def _from_blocks(out):
  return softmax.from_blocks_layout(out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(plan, q, k, v, q_len, kv_len):
  return _forward(plan, q, k, v, q_len, kv_len)[0]


def _forward(plan, q, k, v, q_len, kv_len):
  """q [b,K,G,tq,H], k v [b,K,tk,H] (local blocks) -> out [b,tq,N,H] float32, lse."""
  tq, tk = q.shape[3], k.shape[2]
  row = q.shape[:4]

  def step(i, carry):
    k_blk, v_blk, m, l, acc = carry
    q_pos, k_pos = plan.positions(i, tq, tk)

    def fold(m, l, acc):
      s = plan.logits(q, k_blk, q_pos, k_pos, q_len, kv_len)
      m_new = jnp.maximum(m, s.max(-1))
      shift = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
      p = jnp.exp(s - shift[..., None])
      correction = jnp.exp(jnp.where(jnp.isfinite(m), m, -jnp.inf) - shift)
      acc = acc * correction[..., None] + jnp.einsum(
          "bkgts,bksh->bkgth", p.astype(v_blk.dtype), v_blk, preferred_element_type=jnp.float32)
      return m_new, l * correction + p.sum(-1), acc

    m, l, acc = jax.lax.cond(plan.reachable(q_pos, k_pos), fold, lambda *c: c, m, l, acc)
    k_blk, v_blk = plan.pass_on(k_blk, v_blk)
    return k_blk, v_blk, m, l, acc

  init = (k, v, jnp.full(row, -jnp.inf), jnp.zeros(row), jnp.zeros(q.shape, jnp.float32))
  _, _, m, l, acc = jax.lax.fori_loop(0, plan.size, step, init)
  out = acc / jnp.where(l > 0, l, 1.0)[..., None]
  lse = jnp.where(l > 0, m + jnp.log(jnp.where(l > 0, l, 1.0)), -jnp.inf)
  return _from_blocks(out), lse


def _attention_fwd(plan, q, k, v, q_len, kv_len):
  out, lse = _forward(plan, q, k, v, q_len, kv_len)
  return out, (q, k, v, q_len, kv_len, out, lse)


def _attention_bwd(plan, residuals, dout):
  q, k, v, q_len, kv_len, out, lse = residuals
  tq, tk = q.shape[3], k.shape[2]
  B, K, G, _, H = q.shape
  to_blocks = lambda x: x.reshape(B, tq, K, G, H).transpose(0, 2, 3, 1, 4).astype(jnp.float32)
  do, o = to_blocks(dout), to_blocks(out)
  delta = jnp.sum(do * o, -1)                         # [b,K,G,tq]
  lse = jnp.where(jnp.isfinite(lse), lse, 0.0)        # rows with no key: p is 0 anyway

  def step(i, carry):
    k_blk, v_blk, dk, dv, dq = carry
    q_pos, k_pos = plan.positions(i, tq, tk)

    def fold(dk, dv, dq):
      p = jnp.exp(plan.logits(q, k_blk, q_pos, k_pos, q_len, kv_len) - lse[..., None])
      dv = dv + jnp.einsum("bkgts,bkgth->bksh", p, do)
      dp = jnp.einsum("bkgth,bksh->bkgts", do, v_blk.astype(jnp.float32))
      ds = p * (dp - delta[..., None]) * plan.scale
      dq = dq + jnp.einsum("bkgts,bksh->bkgth", ds, k_blk.astype(jnp.float32))
      dk = dk + jnp.einsum("bkgts,bkgth->bksh", ds, q.astype(jnp.float32))
      return dk, dv, dq

    dk, dv, dq = jax.lax.cond(plan.reachable(q_pos, k_pos), fold, lambda *c: c, dk, dv, dq)
    k_blk, v_blk, dk, dv = plan.pass_on(k_blk, v_blk, dk, dv)  # dk, dv travel with their block
    return k_blk, v_blk, dk, dv, dq

  zeros = lambda x: jnp.zeros(x.shape, jnp.float32)
  _, _, dk, dv, dq = jax.lax.fori_loop(0, plan.size, step, (k, v, zeros(k), zeros(v), zeros(q)))
  return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None)


_attention.defvjp(_attention_fwd, _attention_bwd)


def check_options(axis_name="sequence"):
  if not isinstance(axis_name, str) or not axis_name:
    raise ValueError(f"{NAME}: axis_name must be a mesh axis name (a str), got {axis_name!r}")
