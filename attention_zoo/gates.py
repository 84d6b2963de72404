"""Layer-side projections that make a variant's per-token inputs (gates, beta) from x [B, T, D].

A registry entry names one per input (`registry.Input.projection`); the attention layer
builds them, so a new gated variant needs no change to the layer. Each produces [B, T, N]
(one value per query head) or, with `per_head_dim`, [B, T, N, H]; in float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class _Projection(nnx.Module):
  """x [B, T, D] -> [B, T, N] or [B, T, N, H] through a linear map (optionally low rank)."""

  def __init__(self, features, num_heads, head_dim, per_head_dim, *, rank=None, use_bias=False,
               rngs: nnx.Rngs):
    self.shape = (num_heads, head_dim) if per_head_dim else (num_heads,)
    out = math.prod(self.shape)
    self.down = nnx.Linear(features, rank, use_bias=False, rngs=rngs) if rank else None
    self.up = nnx.Linear(rank or features, out, use_bias=use_bias, rngs=rngs)

  def linear(self, x):
    h = self.up(x if self.down is None else self.down(x)).astype(jnp.float32)
    return h.reshape(*h.shape[:-1], *self.shape)


class Sigmoid(_Projection):
  """beta = sigmoid(x W) in (0, 1): DeltaNet's and Gated DeltaNet's writing strength."""

  def __call__(self, x):
    return jax.nn.sigmoid(self.linear(x))


class LowRankLogSigmoid(_Projection):
  """GLA's gate: log_gate = logsigmoid(x W_down W_up + b) / 16 (Yang et al. 2023, rank 16;
  the normaliser 16 keeps the initial gates near 1, i.e. long memories)."""

  RANK, NORMALIZER = 16, 16.0

  def __init__(self, features, num_heads, head_dim, per_head_dim, *, rngs: nnx.Rngs):
    super().__init__(features, num_heads, head_dim, per_head_dim, rank=self.RANK,
                     use_bias=True, rngs=rngs)

  def __call__(self, x):
    return jax.nn.log_sigmoid(self.linear(x)) / self.NORMALIZER


class SoftplusDecay(_Projection):
  """Mamba-2's and Gated DeltaNet's decay: log_gate = -exp(A_log) * softplus(x W + dt_bias),
  with A ~ U(1, 16) and dt log-uniform in [1e-3, 0.1] at initialisation, as in their code."""

  def __init__(self, features, num_heads, head_dim, per_head_dim, *, rngs: nnx.Rngs):
    super().__init__(features, num_heads, head_dim, per_head_dim, rngs=rngs)
    key_a, key_dt = jax.random.split(rngs.params())
    self.a_log = nnx.Param(jnp.log(jax.random.uniform(key_a, self.shape, minval=1, maxval=16)))
    dt = jnp.exp(jax.random.uniform(key_dt, self.shape) * (np.log(0.1) - np.log(1e-3))
                 + np.log(1e-3))
    self.dt_bias = nnx.Param(dt + jnp.log(-jnp.expm1(-dt)))  # softplus(dt_bias) = dt

  def __call__(self, x):
    return -jnp.exp(self.a_log[...]) * jax.nn.softplus(self.linear(x) + self.dt_bias[...])


PROJECTIONS = {"sigmoid": Sigmoid, "low_rank_logsigmoid": LowRankLogSigmoid,
               "softplus_decay": SoftplusDecay}
