"""One Flax (NNX) multi-head attention layer whose attention function is chosen by name."""

from __future__ import annotations

import functools

import jax.numpy as jnp
from flax import nnx

import attention_zoo
from attention_zoo import decoding, registry


class MultiHeadAttention(nnx.Module):
  """Query/key/value/output projections and heads around an `attention_zoo` variant.

  `num_kv_heads < num_heads` gives grouped-query attention. `options` are the variant's
  options bound at lookup (e.g. `local_window_size` for local). Self-attention when
  `context` is None, else attention from `x` to `context`.
  """

  def __init__(self, features: int, num_heads: int, *, attention: str = "softmax",
               options: dict | None = None, num_kv_heads: int | None = None,
               head_dim: int | None = None, rngs: nnx.Rngs):
    self.attention, self.options = attention, registry.frozen(options or {})
    attention_zoo.get(attention, **dict(self.options))  # a bad name or option fails at build
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
    self.out = nnx.LinearGeneral((self.num_heads, self.head_dim), features, axis=(-2, -1),
                                 use_bias=False, rngs=rngs)

  def __call__(self, x, context=None, *, is_causal=False, query_lengths=None,
               context_lengths=None):
    """x [B, T, D] (and context [B, S, D]) -> [B, T, D]; lengths are int32 [B] padding."""
    context = x if context is None else context
    attend = attention_zoo.get(self.attention, **dict(self.options))
    out = attend(self.query(x), self.key(context), self.value(context), is_causal=is_causal,
                 query_seq_lengths=query_lengths, key_value_seq_lengths=context_lengths)
    return self.out(out)

  def attend_at(self, x, context, position, context_lengths=None):
    """Non-causal attention (decoding cross-attention) of x [B, T, D] standing at `position`."""
    out = decoding.attend_at(self.attention, dict(self.options), position, self.query(x),
                             self.key(context), self.value(context), context_lengths)
    return self.out(out)

  def init_cache(self, batch: int, max_length: int, dtype=jnp.float32):
    """The decoding state of causal self-attention (see `attention_zoo.decoding`)."""
    return decoding.init(self.attention, dict(self.options), batch, max_length,
                         self.num_kv_heads, self.head_dim, dtype)

  def decode_step(self, x, cache):
    """Causal self-attention of one new position x [B, 1, D] over the prefix: (y, cache)."""
    out, cache = decoding.step(self.attention, dict(self.options), cache, self.query(x),
                               self.key(x), self.value(x))
    return self.out(out), cache
