"""Greedy decoding and beam search with each variant's incremental-decoding cache."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from experiments import data


def greedy(graphdef, params, batch):
  """Tokens [B, T]: at each position the most likely next token."""
  return beam_search(graphdef, params, batch, beam_size=1)


def beam_search(graphdef, params, batch, beam_size: int, length_penalty: float = 0.6):
  """Tokens [B, T] of the best of `beam_size` hypotheses.

  A hypothesis that has emitted EOS is frozen (it continues with padding at no cost);
  hypotheses are ranked during the search by total log-probability and at the end by
  log-probability / ((5 + length) / 6) ** length_penalty (Wu et al. 2016). Caches of
  every variant are pytrees with the batch first, so reordering beams is one gather.
  """
  model = nnx.merge(graphdef, params)
  B, T = batch["targets"].shape
  W = beam_size
  beams = lambda x: jnp.repeat(x, W, axis=0)  # [B, ...] -> [B*W, ...]
  memory = beams(model.encode(batch["inputs"], batch["input_lengths"]))
  input_lengths = beams(batch["input_lengths"])

  def body(t, carry):
    tokens, scores, done, caches = carry                      # [B,W,T], [B,W], [B,W]
    previous = jnp.where(t == 0, data.BOS, tokens[:, :, jnp.maximum(t - 1, 0)])
    logits, caches = model.decode_step(previous.reshape(B * W, 1), t, caches, memory,
                                       input_lengths)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(B, W, -1)
    frozen = jnp.full_like(logp, -jnp.inf).at[..., data.PAD].set(0.0)
    candidates = scores[..., None] + jnp.where(done[..., None], frozen, logp)
    scores, flat = jax.lax.top_k(candidates.reshape(B, -1), W)
    parent, token = flat // logp.shape[-1], flat % logp.shape[-1]
    pick = lambda x: jnp.take_along_axis(x, parent.reshape(B, W, *([1] * (x.ndim - 2))), axis=1)
    tokens = pick(tokens).at[:, :, t].set(token)
    done = pick(done) | (token == data.EOS)
    reorder = (parent + W * jnp.arange(B)[:, None]).reshape(-1)
    caches = jax.tree.map(lambda c: c[reorder] if c.ndim and c.shape[0] == B * W else c, caches)
    return tokens, scores, done, caches

  # Only the first beam is live at the start, so the W beams do not repeat one hypothesis.
  scores = jnp.where(jnp.arange(W) == 0, 0.0, -jnp.inf)[None].repeat(B, axis=0)
  init = (jnp.zeros((B, W, T), jnp.int32), scores, jnp.zeros((B, W), bool),
          model.init_caches(B * W, T))
  tokens, scores, done, _ = jax.lax.fori_loop(0, T, body, init)
  length = jnp.sum((tokens != data.PAD) & (tokens != data.EOS), axis=-1) + 1
  ranked = scores / ((5.0 + length) / 6.0) ** length_penalty
  return jnp.take_along_axis(tokens, ranked.argmax(axis=1)[:, None, None], axis=1)[:, 0]


def sequence_log_prob(graphdef, params, batch, tokens):
  """Log-probability [B] under the model of decoded `tokens` up to and including EOS."""
  model = nnx.merge(graphdef, params)
  decoder_inputs = jnp.concatenate([jnp.full_like(tokens[:, :1], data.BOS), tokens[:, :-1]], 1)
  ended = jnp.cumsum(tokens == data.EOS, axis=1) - (tokens == data.EOS)
  logits = model(batch["inputs"], batch["input_lengths"], decoder_inputs,
                 jnp.full(tokens.shape[:1], tokens.shape[1], jnp.int32))
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)),
                             tokens[..., None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(ended == 0, logp, 0.0), axis=1)


def exact_matches(tokens, batch):
  """Rows whose decoded tokens equal the target up to and including EOS."""
  weights = jnp.arange(tokens.shape[1]) < batch["target_lengths"][:, None]
  return jnp.sum(jnp.all((tokens == batch["targets"]) | ~weights, axis=1)
                 & (batch["target_lengths"] > 0))
