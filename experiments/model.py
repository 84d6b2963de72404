"""An encoder-decoder Transformer whose attention variant is a config field per role.

Pre-LayerNorm blocks, sinusoidal positions (so any length can be evaluated), tied input
and output embeddings. Encoder self-attention and decoder cross-attention honour the
padding lengths; decoder self-attention is causal.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attention_zoo.layer import MultiHeadAttention


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  vocab_size: int
  d_model: int = 128
  num_heads: int = 4
  num_kv_heads: int | None = None     # None: as many as num_heads; fewer: grouped-query
  d_ff: int = 512
  num_encoder_layers: int = 2
  num_decoder_layers: int = 2
  dropout_rate: float = 0.0
  attention: str = "softmax"          # decoder self-attention (and encoder's, by default)
  cross_attention: str | None = None  # None: the same as `attention`
  encoder_attention: str | None = None  # None: the same as `attention`
  attention_options: tuple = ()       # ((variant, ((option, value), ...)), ...)

  def options(self, variant: str) -> dict:
    return dict(dict(self.attention_options).get(variant, ()))


def sinusoids(positions, d_model):
  """[..., d_model] sinusoidal position encodings of int positions."""
  freqs = np.exp(-np.log(10000.0) * np.arange(0, d_model, 2) / d_model)
  angles = positions[..., None].astype(jnp.float32) * freqs
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def _drop(dropout: nnx.Dropout, x, rngs):
  """Dropout while training (rngs given); the identity in evaluation and decoding."""
  return dropout(x, deterministic=rngs is None, rngs=rngs)


class _FeedForward(nnx.Module):
  def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
    self.up = nnx.Linear(cfg.d_model, cfg.d_ff, rngs=rngs)
    self.down = nnx.Linear(cfg.d_ff, cfg.d_model, rngs=rngs)

  def __call__(self, x):
    return self.down(jax.nn.gelu(self.up(x)))


class _Block(nnx.Module):
  """Self-attention, optional cross-attention and a feed-forward layer, each pre-normed."""

  def __init__(self, cfg: TransformerConfig, *, cross: bool, self_attention: str,
               rngs: nnx.Rngs):
    attention = lambda name: MultiHeadAttention(
        cfg.d_model, cfg.num_heads, attention=name, options=cfg.options(name),
        num_kv_heads=cfg.num_kv_heads, rngs=rngs)
    self.self_norm, self.self_attention = nnx.LayerNorm(cfg.d_model, rngs=rngs), attention(
        self_attention)
    self.cross_norm = nnx.LayerNorm(cfg.d_model, rngs=rngs) if cross else None
    self.cross_attention = attention(cfg.cross_attention or cfg.attention) if cross else None
    self.ff_norm, self.ff = nnx.LayerNorm(cfg.d_model, rngs=rngs), _FeedForward(cfg, rngs)
    self.dropout = nnx.Dropout(cfg.dropout_rate)

  def __call__(self, x, lengths, *, is_causal, memory=None, memory_lengths=None, rngs=None,
               cache=None, position=None):
    """Whole sequences; or, given a `cache`, one decoding step at `position`."""
    h = self.self_norm(x)
    if cache is None:
      h = self.self_attention(h, is_causal=is_causal, query_lengths=lengths,
                              context_lengths=lengths)
    else:
      h, cache = self.self_attention.decode_step(h, cache)
    x = x + _drop(self.dropout, h, rngs)
    if self.cross_attention is not None:
      h = self.cross_norm(x)
      if cache is None:
        h = self.cross_attention(h, memory, query_lengths=lengths, context_lengths=memory_lengths)
      else:
        h = self.cross_attention.attend_at(h, memory, position, memory_lengths)
      x = x + _drop(self.dropout, h, rngs)
    return x + _drop(self.dropout, self.ff(self.ff_norm(x)), rngs), cache


class Transformer(nnx.Module):

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, rngs=rngs)
    self.encoder = nnx.List([
        _Block(cfg, cross=False, self_attention=cfg.encoder_attention or cfg.attention,
               rngs=rngs) for _ in range(cfg.num_encoder_layers)])
    self.decoder = nnx.List([_Block(cfg, cross=True, self_attention=cfg.attention, rngs=rngs)
                             for _ in range(cfg.num_decoder_layers)])
    self.encoder_norm = nnx.LayerNorm(cfg.d_model, rngs=rngs)
    self.decoder_norm = nnx.LayerNorm(cfg.d_model, rngs=rngs)
    self.dropout = nnx.Dropout(cfg.dropout_rate)

  def _embed(self, tokens, positions, rngs):
    x = self.embed(tokens) * np.sqrt(self.cfg.d_model) + sinusoids(positions, self.cfg.d_model)
    return _drop(self.dropout, x, rngs)

  def encode(self, inputs, input_lengths, rngs=None):
    """inputs int [B, S] (right-padded) -> memory [B, S, D]."""
    x = self._embed(inputs, jnp.arange(inputs.shape[1]), rngs)
    for block in self.encoder:
      x, _ = block(x, input_lengths, is_causal=False, rngs=rngs)
    return self.encoder_norm(x)

  def decode(self, decoder_inputs, target_lengths, memory, input_lengths, rngs=None):
    """Teacher-forced decoder: decoder_inputs int [B, T] -> logits [B, T, V]."""
    y = self._embed(decoder_inputs, jnp.arange(decoder_inputs.shape[1]), rngs)
    for block in self.decoder:
      y, _ = block(y, target_lengths, is_causal=True, memory=memory,
                   memory_lengths=input_lengths, rngs=rngs)
    return self.embed.attend(self.decoder_norm(y))

  def __call__(self, inputs, input_lengths, decoder_inputs, target_lengths, rngs=None):
    memory = self.encode(inputs, input_lengths, rngs)
    return self.decode(decoder_inputs, target_lengths, memory, input_lengths, rngs)

  def init_caches(self, batch: int, max_length: int):
    return [block.self_attention.init_cache(batch, max_length) for block in self.decoder]

  def decode_step(self, token, position, caches, memory, input_lengths):
    """One decoder position: token int [B, 1] at `position` -> (logits [B, V], caches)."""
    y = self._embed(token, jnp.full((1,), position), None)
    new_caches = []
    for block, cache in zip(self.decoder, caches):
      y, cache = block(y, None, is_causal=True, memory=memory, memory_lengths=input_lengths,
                       cache=cache, position=position)
      new_caches.append(cache)
    return self.embed.attend(self.decoder_norm(y))[:, 0], new_caches
