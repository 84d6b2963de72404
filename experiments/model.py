"""One Transformer in three shapes, whose attention variant is a config field per role.

- `encoder_decoder` (seq2seq): encoder self-attention, causal decoder self-attention and
  cross-attention; teacher-forced logits, decoding with each variant's incremental state.
- `decoder` (causal language model): decoder blocks without cross-attention.
- `encoder` (classifier): encoder blocks, then CLS or mean pooling and a linear head.

The blocks and the attention layer are shared by all three. Pre-LayerNorm blocks; positions
sinusoidal (added to the embeddings, so any length can be evaluated), learned (a table of
`max_positions` rows added to the embeddings; longer sequences raise), rotary (`rope`, in
self-attention, decoding at the right offset), `alibi` (a score_mod in self-attention: no
dense bias; decoding at the true positions) or none; tied input and output embeddings.
Self-attention honours the padding lengths; decoder self-attention is causal.

Packed rows (several examples per row, experiments/data.py) come as `segments`: (segment
ids, positions), int [B, L] each. Attention then stays within an example (the decoder's ids
paired with the encoder's in cross-attention) and positions restart with each; ALiBi's
q_idx - kv_idx needs nothing more, as within an example it equals the position difference
and pairs across examples are masked. A packed classifier row scores each example at its
first position: with CLS pooling that position is a slot the data leaves for the CLS vector
(a BOS token, replaced here), as the unpacked model puts the CLS vector before the sequence;
with mean pooling each position reads its example's mean.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attention_zoo.layer import MultiHeadAttention


SHAPES = ("encoder_decoder", "decoder", "encoder")
POSITIONS = ("sinusoidal", "learned", "rope", "alibi", "none")
POOLINGS = ("cls", "mean")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  vocab_size: int
  shape: str = "encoder_decoder"      # one of SHAPES
  pooling: str = "cls"                # encoder (classifier): cls or mean, as LRA's pooling_mode
  positions: str = "sinusoidal"       # one of POSITIONS
  max_positions: int = 1024           # learned positions: the table's rows
  num_classes: int | None = None      # encoder (classifier): its output size
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
    attention = lambda name, rope=False, alibi=False: MultiHeadAttention(
        cfg.d_model, cfg.num_heads, attention=name, options=cfg.options(name),
        num_kv_heads=cfg.num_kv_heads, rope=rope, alibi=alibi, rngs=rngs)
    self.self_norm = nnx.LayerNorm(cfg.d_model, rngs=rngs)
    self.self_attention = attention(self_attention, rope=cfg.positions == "rope",
                                    alibi=cfg.positions == "alibi")
    self.cross_norm = nnx.LayerNorm(cfg.d_model, rngs=rngs) if cross else None
    self.cross_attention = attention(cfg.cross_attention or cfg.attention) if cross else None
    self.ff_norm, self.ff = nnx.LayerNorm(cfg.d_model, rngs=rngs), _FeedForward(cfg, rngs)
    self.dropout = nnx.Dropout(cfg.dropout_rate)

  def __call__(self, x, lengths, *, is_causal, memory=None, memory_lengths=None, rngs=None,
               cache=None, position=None, segments=None, memory_segment_ids=None):
    """Whole sequences (packed: `segments`, and the memory's segment ids); or, given a
    `cache`, one decoding step at `position`."""
    segment_ids, positions = segments or (None, None)
    h = self.self_norm(x)
    if cache is None:
      h = self.self_attention(h, is_causal=is_causal, query_lengths=lengths,
                              context_lengths=lengths, positions=positions,
                              segment_ids=segment_ids)
    else:
      h, cache = self.self_attention.decode_step(h, cache, position)
    x = x + _drop(self.dropout, h, rngs)
    if self.cross_attention is not None:
      h = self.cross_norm(x)
      if cache is None:
        h = self.cross_attention(h, memory, query_lengths=lengths, context_lengths=memory_lengths,
                                 segment_ids=None if segments is None
                                 else (segment_ids, memory_segment_ids))
      else:
        h = self.cross_attention.attend_at(h, memory, position, memory_lengths)
      x = x + _drop(self.dropout, h, rngs)
    return x + _drop(self.dropout, self.ff(self.ff_norm(x)), rngs), cache


class Transformer(nnx.Module):

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    if cfg.shape not in SHAPES or cfg.pooling not in POOLINGS or cfg.positions not in POSITIONS:
      raise ValueError(f"TransformerConfig: shape={cfg.shape!r} (choose from {SHAPES}), "
                       f"pooling={cfg.pooling!r} (from {POOLINGS}), positions="
                       f"{cfg.positions!r} (from {POSITIONS})")
    self.cfg = cfg
    self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, rngs=rngs)
    self.position_table = (nnx.Embed(cfg.max_positions, cfg.d_model, rngs=rngs)
                           if cfg.positions == "learned" else None)
    encoder = cfg.shape != "decoder"
    decoder = cfg.shape != "encoder"
    self.encoder = nnx.List([
        _Block(cfg, cross=False, self_attention=cfg.encoder_attention or cfg.attention,
               rngs=rngs) for _ in range(cfg.num_encoder_layers if encoder else 0)])
    self.decoder = nnx.List([
        _Block(cfg, cross=cfg.shape == "encoder_decoder", self_attention=cfg.attention,
               rngs=rngs) for _ in range(cfg.num_decoder_layers if decoder else 0)])
    self.encoder_norm = nnx.LayerNorm(cfg.d_model, rngs=rngs) if encoder else None
    self.decoder_norm = nnx.LayerNorm(cfg.d_model, rngs=rngs) if decoder else None
    classifier = cfg.shape == "encoder"
    if classifier and not cfg.num_classes:
      raise ValueError("TransformerConfig: the encoder (classifier) shape needs num_classes")
    self.cls = (nnx.Param(jax.random.normal(rngs.params(), (cfg.d_model,)) * 0.02)
                if classifier and cfg.pooling == "cls" else None)
    self.head = nnx.Linear(cfg.d_model, cfg.num_classes, rngs=rngs) if classifier else None
    self.dropout = nnx.Dropout(cfg.dropout_rate)

  def _embed(self, tokens, positions, rngs):
    return _drop(self.dropout, self.embed(tokens) * np.sqrt(self.cfg.d_model)
                 + self._positions(positions), rngs)

  def _positions(self, positions):
    """What the embeddings get added for int `positions` (0 where positions live elsewhere)."""
    if self.cfg.positions == "sinusoidal":
      return sinusoids(positions, self.cfg.d_model)
    if self.position_table is not None:
      if positions.shape[-1] > self.cfg.max_positions:
        raise ValueError(f"learned positions: {positions.shape[-1]} positions exceed the "
                         f"table's max_positions={self.cfg.max_positions}")
      return self.position_table(positions)
    return 0.0

  def encode(self, inputs, input_lengths, rngs=None, prefix=None, segments=None):
    """inputs int [B, S] (right-padded, or packed: `segments`) -> memory [B, S, D]; `prefix`
    [D] (the classifier's CLS vector) is put before every sequence at position 0, or, in a
    packed row, replaces the slot at each example's position 0."""
    x = self._embed(inputs, jnp.arange(inputs.shape[1]) + (prefix is not None)
                    if segments is None else segments[1], rngs)
    if prefix is not None:
      start = prefix + self._positions(jnp.zeros((1,), jnp.int32))
      if segments is None:
        x = jnp.concatenate([jnp.broadcast_to(start, (x.shape[0], 1, x.shape[2])), x], axis=1)
        input_lengths = input_lengths + 1
      else:
        x = jnp.where(((segments[1] == 0) & (segments[0] > 0))[..., None], start, x)
    for block in self.encoder:
      x, _ = block(x, input_lengths, is_causal=False, rngs=rngs, segments=segments)
    return self.encoder_norm(x)

  def decode(self, decoder_inputs, target_lengths, memory, input_lengths, rngs=None,
             segments=None, memory_segment_ids=None):
    """Teacher-forced decoder: decoder_inputs int [B, T] -> logits [B, T, V]."""
    y = self._embed(decoder_inputs, jnp.arange(decoder_inputs.shape[1])
                    if segments is None else segments[1], rngs)
    for block in self.decoder:
      y, _ = block(y, target_lengths, is_causal=True, memory=memory,
                   memory_lengths=input_lengths, rngs=rngs, segments=segments,
                   memory_segment_ids=memory_segment_ids)
    return self.embed.attend(self.decoder_norm(y))

  def __call__(self, inputs, input_lengths, decoder_inputs, target_lengths, rngs=None,
               input_segments=None, target_segments=None):
    """encoder_decoder: teacher-forced logits [B, T, V] of the targets given the inputs
    (packed rows: both `segments` given)."""
    memory = self.encode(inputs, input_lengths, rngs, segments=input_segments)
    return self.decode(decoder_inputs, target_lengths, memory, input_lengths, rngs,
                       target_segments, None if input_segments is None else input_segments[0])

  def language_model(self, tokens, lengths, rngs=None, segments=None):
    """decoder: next-token logits [B, L, V] of tokens int [B, L] (right-padded, or packed:
    `segments`)."""
    return self.decode(tokens, lengths, None, None, rngs, segments)

  def classify(self, inputs, input_lengths, rngs=None, segments=None):
    """encoder: class logits [B, C] of inputs int [B, S], pooled by CLS or the mean; packed
    rows (`segments`): logits [B, S, C], each example's at its first position (module
    docstring)."""
    prefix = None if self.cls is None else self.cls[...]
    memory = self.encode(inputs, input_lengths, rngs, prefix=prefix, segments=segments)
    if prefix is None:  # mean pooling; an unpacked row is one example (id 1), then padding
      ids = segments[0] if segments is not None else (
          jnp.arange(inputs.shape[1]) < input_lengths[:, None]).astype(jnp.int32)
      memory = _segment_means(memory, ids)
    return self.head(memory if segments is not None else memory[:, 0])

  def state_size(self, max_length: int) -> int:
    """Floats of the decoding state (caches) of all self-attention layers for one sequence of
    `max_length` tokens: what a variant must remember (Zoology's and Based's x-axis). An
    encoder-only model counts its encoder's layers, as if it decoded."""
    blocks = self.decoder if len(self.decoder) else self.encoder
    return sum(int(np.prod(x.shape)) for block in blocks
               for x in jax.tree.leaves(jax.eval_shape(
                   lambda b=block: b.self_attention.init_cache(1, max_length)))
               if jnp.issubdtype(x.dtype, jnp.floating))

  def init_caches(self, batch: int, max_length: int):
    if self.position_table is not None and max_length > self.cfg.max_positions:
      raise ValueError(f"learned positions: decoding {max_length} positions exceeds the "
                       f"table's max_positions={self.cfg.max_positions}")
    return [block.self_attention.init_cache(batch, max_length) for block in self.decoder]

  def decode_step(self, token, position, caches, memory=None, input_lengths=None):
    """One decoder position: token int [B, 1] at `position` -> (logits [B, V], caches)."""
    y = self._embed(token, jnp.full((1,), position), None)
    new_caches = []
    for block, cache in zip(self.decoder, caches):
      y, cache = block(y, None, is_causal=True, memory=memory, memory_lengths=input_lengths,
                       cache=cache, position=position)
      new_caches.append(cache)
    return self.embed.attend(self.decoder_norm(y))[:, 0], new_caches


def example_index(segment_ids, shape) -> jax.Array:
  """Each position's example as one flat index [B·L] over a batch of `shape` (B, L): the
  (row, segment id) pair as row·(L + 1) + id, so sums per example are segment sums over
  B·(L + 1) ids rather than a [B, L, examples] one-hot. No `segment_ids`: a row each."""
  B, L = shape
  ids = jnp.arange(B)[:, None] * (L + 1) + (0 if segment_ids is None else segment_ids)
  return jnp.broadcast_to(ids, (B, L)).ravel()


def _segment_means(x, segment_ids):
  """x [B, S, D] -> [B, S, D]: at each position, the mean of x over its segment (its row's
  positions of the same id)."""
  B, S, _ = x.shape
  ids = example_index(segment_ids, (B, S))
  sums = jax.ops.segment_sum(x.reshape(B * S, -1).astype(jnp.float32), ids, B * (S + 1))
  counts = jax.ops.segment_sum(jnp.ones(B * S, jnp.float32), ids, B * (S + 1))
  return (sums / jnp.maximum(counts, 1)[:, None])[ids].reshape(x.shape).astype(x.dtype)
