"""One Flax (NNX) multi-head attention layer whose attention function is chosen by name.

What a variant needs around it is read from its registry entry, never from its name: the
projections of its per-token inputs (gates, beta), L2-normalised queries and keys (the
delta rule), an output norm per head (the gated recurrences).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from flax import nnx

import attention_zoo
from attention_zoo import decoding, gates, mods, registry


def rope(x, positions, base: float = 10_000.0):
  """x [B, T, N, H] rotated by integer `positions` [T] or [B, T] (packed rows) (rotary
  embeddings, Su et al. 2021; halves paired as in GPT-NeoX and LLaMA), in float32, returned
  in x's dtype."""
  half = x.shape[-1] // 2
  angles = positions[..., None].astype(jnp.float32) * base ** (-jnp.arange(half) / half)
  sin, cos = jnp.sin(angles)[..., None, :], jnp.cos(angles)[..., None, :]  # [(B,) T, 1, H/2]
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


def _l2_normalize(x, eps=1e-6):
  x32 = x.astype(jnp.float32)
  return (x32 * jnp.reciprocal(jnp.sqrt(jnp.sum(x32 * x32, -1, keepdims=True) + eps))).astype(
      x.dtype)


class MultiHeadAttention(nnx.Module):
  """Query/key/value/output projections and heads around an `attention_zoo` variant.

  `num_kv_heads < num_heads` gives grouped-query attention. `options` are the variant's
  options bound at lookup (e.g. `local_window_size` for local). Self-attention when
  `context` is None, else attention from `x` to `context`. With `rope`, self-attention
  rotates queries and keys by their positions (rotary embeddings).
  """

  def __init__(self, features: int, num_heads: int, *, attention: str = "softmax",
               options: dict | None = None, num_kv_heads: int | None = None,
               head_dim: int | None = None, rope: bool = False, alibi: bool = False,
               rngs: nnx.Rngs):
    self.attention, self.options = attention, registry.frozen(options or {})
    attention_zoo.get(attention, **dict(self.options))  # a bad name or option fails at build
    entry = registry.entry(attention)
    self.num_heads, self.num_kv_heads = num_heads, num_kv_heads or num_heads
    self.head_dim = head_dim or features // num_heads
    if features % num_heads and head_dim is None:
      raise ValueError(f"features={features} is not divisible by num_heads={num_heads}; "
                       f"pass head_dim")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}")
    project = functools.partial(nnx.LinearGeneral, features, use_bias=False, rngs=rngs)
    self.query = project((self.num_heads, self.head_dim))
    self.key = project((self.num_kv_heads, self.head_dim))
    self.value = project((self.num_kv_heads, self.head_dim))
    self.inputs = nnx.Dict({
        name: gates.PROJECTIONS[spec.projection](features, self.num_heads, self.head_dim,
                                                 spec.per_head_dim, rngs=rngs)
        for name, spec in entry.inputs.items()})
    self.normalize_qk, self.rope = entry.normalize_qk, rope
    if alibi and "score_mod" in entry.refuses:
      raise ValueError(f"alibi positions need a variant that takes score_mod; {attention!r} "
                       f"refuses it")
    # ALiBi in self-attention (a score_mod: no [T, S] bias); made once, so compiled once.
    self.score_mod = mods.alibi(self.num_heads) if alibi else None
    if rope and self.head_dim % 2:
      raise ValueError(f"rope needs an even head_dim, got {self.head_dim}")
    self.output_norm = nnx.RMSNorm(self.head_dim, rngs=rngs) if entry.output_norm else None
    self.out = nnx.LinearGeneral((self.num_heads, self.head_dim), features, axis=(-2, -1),
                                 use_bias=False, rngs=rngs)

  def _project(self, x, context, positions=None):
    """Queries, keys, values and the variant's per-token inputs (computed from x); with
    `positions` (self-attention), rotary embeddings where the layer has them."""
    q, k, v = self.query(x), self.key(context), self.value(context)
    if self.normalize_qk:
      q, k = _l2_normalize(q), _l2_normalize(k)
    if self.rope and positions is not None:
      q, k = rope(q, positions), rope(k, positions)
    return q, k, v, {name: projection(x) for name, projection in self.inputs.items()}

  def _output(self, out):
    return self.out(out if self.output_norm is None else self.output_norm(out))

  def __call__(self, x, context=None, *, is_causal=False, query_lengths=None,
               context_lengths=None, positions=None, segment_ids=None):
    """x [B, T, D] (and context [B, S, D]) -> [B, T, D]; lengths are int32 [B] padding;
    `positions` int [T] or [B, T] (self-attention with rope; default 0..T-1);
    `segment_ids` as the variant takes them (int [B, T], or a (query, context) pair of
    [B, T] and [B, S]): a query attends only its own segment's keys (packed rows)."""
    if context is None and self.rope and positions is None:
      positions = jnp.arange(x.shape[1])
    q, k, v, inputs = self._project(x, x if context is None else context,
                                    positions if context is None else None)
    attend = attention_zoo.get(self.attention, **dict(self.options))
    if context is None and self.score_mod is not None:
      inputs["score_mod"] = self.score_mod
    if segment_ids is not None:  # packed rows; a variant that refuses them raises, naming them
      inputs["segment_ids"] = segment_ids
    out = attend(q, k, v, is_causal=is_causal, query_seq_lengths=query_lengths,
                 key_value_seq_lengths=context_lengths, **inputs)
    return self._output(out)

  def attend_at(self, x, context, position, context_lengths=None):
    """Non-causal attention (decoding cross-attention) of x [B, T, D] standing at `position`."""
    q, k, v, _ = self._project(x, context)
    out = decoding.attend_at(self.attention, dict(self.options), position, q, k, v,
                             context_lengths)
    return self._output(out)

  def init_cache(self, batch: int, max_length: int, dtype=jnp.float32):
    """The decoding state of causal self-attention (see `attention_zoo.decoding`)."""
    return decoding.init(self.attention, dict(self.options), batch, max_length, self.num_heads,
                         self.num_kv_heads, self.head_dim, dtype)

  def decode_step(self, x, cache, position=None):
    """Causal self-attention of one new position x [B, 1, D] at `position` (needed with
    rope) over the prefix: (y, cache)."""
    if self.rope and position is None:
      raise ValueError("decode_step needs the position of x with rope")
    q, k, v, inputs = self._project(x, x, None if position is None else jnp.full((1,), position))
    if self.score_mod is not None:
      if position is None:
        raise ValueError("decode_step needs the position of x with alibi")
      inputs["score_mod"] = self.score_mod
    out, cache = decoding.step(self.attention, dict(self.options), cache, q, k, v, **inputs)
    return self._output(out), cache
