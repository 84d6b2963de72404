"""Independent references for the tests: JAX's own attention and a numpy mask builder."""

import jax
import jax.numpy as jnp
import numpy as np


def reference(query, key, value, bias=None, mask=None, **kwargs):
  return jax.nn.dot_product_attention(query, key, value, bias, mask, implementation="xla",
                                      **kwargs)


def allowed(B, N, T, S, mask=None, is_causal=False, local_window_size=None,
            query_seq_lengths=None, key_value_seq_lengths=None):
  """bool [B, N, T, S]: may query i attend key j? Built with numpy loops' semantics."""
  i, j = np.arange(T)[:, None], np.arange(S)[None, :]
  ok = np.ones((B, N, T, S), bool)
  if mask is not None:
    ok &= np.asarray(mask)
  if is_causal:
    ok &= j <= i
  if local_window_size is not None:
    left, right = ((local_window_size,) * 2 if isinstance(local_window_size, int)
                   else local_window_size)
    ok &= (j >= i - left) & (j <= i + right)
  if query_seq_lengths is not None:
    ok &= (i[None] < np.asarray(query_seq_lengths)[:, None, None])[:, None]
  if key_value_seq_lengths is not None:
    ok &= (j[None] < np.asarray(key_value_seq_lengths)[:, None, None])[:, None]
  return ok


def live_rows(B, N, T, S, **kwargs):
  """float [B, T, N, 1]: 1 where the query row can attend at least one key."""
  ok = allowed(B, N, T, S, **kwargs).any(axis=-1)  # [B, N, T]
  return ok.transpose(0, 2, 1)[..., None].astype(np.float32)


def kernelized(phi_q, phi_k, v, allowed):
  """Linear attention's quadratic form: out_i = sum_j a_ij v_j / sum_j a_ij with
  a_ij = phi(q_i)·phi(k_j) on allowed pairs ([B, N, T, S]); zeros where the sum is 0."""
  groups = phi_q.shape[2] // phi_k.shape[2]
  phi_k, v = (jnp.repeat(x, groups, axis=2) for x in (phi_k, v))
  a = jnp.einsum("btnf,bsnf->bnts", phi_q, phi_k) * allowed
  den = a.sum(-1)
  out = jnp.einsum("bnts,bsnh->btnh", a, v) / jnp.where(den > 0, den, 1)[..., None].swapaxes(1, 2)
  return jnp.where((den > 0).swapaxes(1, 2)[..., None], out, 0.0)


def per_token_inputs(name, query_shape, seed=0):
  """A variant's per-token inputs (its registry entry's), drawn inside their bounds (clipped
  to [-3, 3]) with a 5% margin; `seed` an int or a numpy Generator."""
  from attention_zoo import registry  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  inputs = {}
  for input_name, spec in registry.entry(name).inputs.items():
    low, high = max(spec.bounds[0], -3.0), min(spec.bounds[1], 3.0)
    inputs[input_name] = jnp.asarray(
        rng.uniform(low + 0.05 * (high - low), high - 0.05 * (high - low),
                    size=spec.shape(query_shape)), jnp.float32)
  return inputs


def unit_keys(name, key):
  """Keys of unit norm for a variant whose layer normalises them (the delta rule is a
  contraction only on unit keys); the keys unchanged otherwise."""
  from attention_zoo import registry  # pylint: disable=import-outside-toplevel
  if not registry.entry(name).normalize_qk:
    return key
  return key / jnp.linalg.norm(key.astype(jnp.float32), axis=-1, keepdims=True).astype(key.dtype)


def softmax_formula(q, k, v, bias, allowed, scale=None, logit_soft_cap=None, sinks=None):
  """Softmax attention written out ([B, T, N, H] inputs, bool allowed [B, N, T, S]), with
  a soft cap (cap·tanh(s/cap) after scale and bias) and sinks (one more logit per head in
  the normaliser, with no value); rows with no allowed key give zeros."""
  N, K, H = q.shape[2], k.shape[2], q.shape[3]
  k, v = jnp.repeat(k, N // K, axis=2), jnp.repeat(v, N // K, axis=2)
  s = jnp.einsum("btnh,bsnh->bnts", q, k) * (1 / np.sqrt(H) if scale is None else scale)
  if bias is not None:
    s = s + jnp.reshape(bias, (1,) * (4 - np.ndim(bias)) + np.shape(bias))
  if logit_soft_cap is not None:
    s = logit_soft_cap * jnp.tanh(s / logit_soft_cap)
  s = jnp.where(allowed, s, -jnp.inf)
  if sinks is not None:
    sink = jnp.broadcast_to(jnp.reshape(sinks, (1, N, 1, 1)), s.shape[:3] + (1,))
    s = jnp.concatenate([s, sink], axis=-1)
  p = jnp.nan_to_num(jax.nn.softmax(s, axis=-1))[..., :allowed.shape[-1]]
  p = jnp.where(jnp.asarray(allowed).any(-1, keepdims=True), p, 0.0)
  return jnp.einsum("bnts,bsnh->btnh", p, v)
