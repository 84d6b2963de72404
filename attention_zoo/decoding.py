"""Incremental (token-by-token) decoding state for each variant, behind one interface.

    cache = init(name, bound_options, batch, max_length, num_heads, kv_heads, head_dim, dtype)
    out, cache = step(name, bound_options, cache, query, key, value, **inputs)  # T = S = 1

Each step equals the variant's causal attention at that position over the whole prefix.
Which decoder a variant has is part of its registry entry (`Variant.decoder`).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

import attention_zoo
from attention_zoo import masking, validation


class Decoder(NamedTuple):
  """How a variant decodes one token at a time.

  init(options, batch, max_length, num_heads, kv_heads, head_dim, dtype) -> cache;
  step(name, options, cache, query, key, value, **inputs) -> (out, cache).
  `as_softmax`: one query at a time is computed as the softmax the variant equals (its
  blocks, band or device split need a whole sequence), in decoding and in cross-attention.
  """
  init: Callable
  step: Callable
  as_softmax: bool = False


def _kv_init(options, batch, max_length, num_heads, kv_heads, head_dim, dtype):
  """Keys and values of every position so far (softmax, chunked)."""
  zeros = jnp.zeros((batch, max_length, kv_heads, head_dim), dtype)
  return dict(key=zeros, value=zeros, index=jnp.zeros((), jnp.int32))


def _window_size(options):
  left, _ = validation.normalize_window("local", options["local_window_size"])
  return left + 1


def _window_init(options, batch, max_length, num_heads, kv_heads, head_dim, dtype):
  """A rolling cache of the last left + 1 keys and values (local): position p in slot p % W."""
  return _kv_init(options, batch, min(_window_size(options), max_length), num_heads, kv_heads,
                  head_dim, dtype)


def _cached_step(name, options, cache, query, key, value, score_mod=None):
  i, size = cache["index"], cache["key"].shape[1]
  slot = i % size  # == i for a full cache, whose size is the maximum length
  cache = dict(key=jax.lax.dynamic_update_slice_in_dim(cache["key"], key, slot, axis=1),
               value=jax.lax.dynamic_update_slice_in_dim(cache["value"], value, slot, axis=1),
               index=i + 1)
  # Slots 0..filled-1 hold exactly the keys the query at position i may attend (for the
  # rolling cache: the last W positions, its causal window), in an order softmax ignores.
  # Causality and the window are thus expressed by the fill length, not by is_causal
  # (which would compare the query's index 0 with the slots'), so both are unbound here.
  filled = jnp.full((query.shape[0],), jnp.minimum(i + 1, size), jnp.int32)
  options = {k: v for k, v in options.items() if k not in ("is_causal", "local_window_size")}
  if _entry(name).decoder.as_softmax:
    name, options = "softmax", {k: v for k, v in options.items() if k == "scale"}
  attend = attention_zoo.get(name, **options)
  mods = {}
  if score_mod is not None:  # at the query's and the slots' positions, not their indices
    position = lambda slot: i - (i - slot) % size  # the rolling cache's slot -> position
    mods["score_mod"] = lambda s, b, h, q, kv: score_mod(s, b, h, i + 0 * q, position(kv))
  return attend(query, cache["key"], cache["value"], key_value_seq_lengths=filled,
                **mods), cache


KV_CACHE = Decoder(_kv_init, _cached_step)
# local: softmax over a rolling cache of its band; ring: softmax over the whole cache.
WINDOW_CACHE = Decoder(_window_init, _cached_step, as_softmax=True)
SOFTMAX_KV_CACHE = Decoder(_kv_init, _cached_step, as_softmax=True)


def recurrent(module) -> Decoder:
  """The recurrent state of a module with `init_state(batch, num_heads, kv_heads, head_dim,
  **options)` and `recurrent_step(state, query, key, value, **options, **inputs)`."""

  def init(options, batch, max_length, num_heads, kv_heads, head_dim, dtype):
    return module.init_state(batch, num_heads, kv_heads, head_dim, **options)

  def step(name, options, cache, query, key, value, **inputs):
    return module.recurrent_step(cache, query, key, value, **options, **inputs)

  return Decoder(init, step)


def _entry(name):
  return attention_zoo.registry.entry(name)


def _decoder(name) -> Decoder:
  decoder = _entry(name).decoder
  if decoder is None:
    raise NotImplementedError(f"{name} attention has no incremental decoding form; "
                              f"variants with one: {attention_zoo.registry.names(decodes=True)}")
  return decoder


def init(name, options, batch, max_length, num_heads, kv_heads, head_dim, dtype=jnp.float32):
  options = {**attention_zoo.options(name), **options}
  return _decoder(name).init(options, batch, max_length, num_heads, kv_heads, head_dim, dtype)


def step(name, options, cache, query, key, value, score_mod=None, **inputs):
  """Attention of one new query over the prefix so far; returns (out [B,1,N,H], cache).

  `inputs` are the variant's per-token inputs at this position (e.g. log_gate [B, 1, N]);
  `score_mod` (a key/value cache's decoders only) sees the true positions of the query and
  of each cached key."""
  extra = {} if score_mod is None else {"score_mod": score_mod}
  return _decoder(name).step(name, {**attention_zoo.options(name), **options}, cache, query,
                             key, value, **extra, **inputs)


def attend_at(name, options, position, query, key, value, key_value_seq_lengths=None):
  """Non-causal attention (cross-attention) of queries standing at `position` + arange(T).

  Only a window depends on where the queries stand; for a windowed variant the window
  is written out as a mask over softmax, the function the variant computes. So is ring
  attention's: a few decoding queries have no sequence to split over devices.
  """
  options = {**attention_zoo.options(name), **options}
  window = options.pop("local_window_size", None)
  decoder = _entry(name).decoder
  if window is None and not (decoder is not None and decoder.as_softmax):
    return attention_zoo.get(name, **options)(query, key, value,
                                              key_value_seq_lengths=key_value_seq_lengths)
  mask = None
  if window is not None:
    window = validation.normalize_window(name, window)
    mask = masking.allowed(position + jnp.arange(query.shape[1]), jnp.arange(key.shape[1]),
                           window=window)[None, None]
  softmax = attention_zoo.get("softmax", **{k: v for k, v in options.items() if k == "scale"})
  return softmax(query, key, value, mask=mask, key_value_seq_lengths=key_value_seq_lengths)
