"""Compiled temporary memory of one attention forward+backward, read from XLA.

    python -m experiments.memory            # the README's table (compiles only; ~1 min)

`memory_analysis()` counts XLA's temporary buffers exactly for the compiled program;
it under-reports a process's resident peak (by up to 1.8x measured here), so use its
figures for ratios and growth, not as absolute resident memory.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import attention_zoo
from experiments import tables

# (label, variant, options bound at lookup, call arguments) for the table and the test.
# chunked's xla code: XLA's compiled memory cannot see the cpu kernel's own buffers.
XLA = dict(implementation="xla")
CASES = (
    ("softmax", "softmax", {}, {}),
    ("chunked", "chunked", XLA, {}),
    ("chunked causal", "chunked", XLA, dict(is_causal=True)),
    ("local window 256 (causal)", "local", dict(local_window_size=(256, 0)), dict(is_causal=True)),
    ("local window 256 (bidirectional)", "local", dict(local_window_size=(128, 128)), {}),
    ("linear causal", "linear", {}, dict(is_causal=True)),
    # The gated and delta-rule recurrences (causal only); their per-token inputs (log_gate,
    # beta) are made as their registry entries declare, and differentiated too.
    ("retention", "retention", {}, dict(is_causal=True)),
    ("gla (per-key-dim gates)", "gla", {}, dict(is_causal=True)),
    ("deltanet", "deltanet", {}, dict(is_causal=True)),
    ("gated_deltanet", "gated_deltanet", {}, dict(is_causal=True)),
)


def forward_backward_temp_bytes(name: str, length: int, options=None, call=None, *, batch=1,
                                heads=8, head_dim=64, dtype=jnp.float32) -> int:
  """Temporary bytes of value_and_grad w.r.t. query, key, value (and the variant's per-token
  inputs) of sum(out**2), T = S."""
  attend = attention_zoo.get(name, **(options or {}))
  shape = jax.ShapeDtypeStruct((batch, length, heads, head_dim), dtype)
  inputs = {n: jax.ShapeDtypeStruct(spec.shape(shape.shape), jnp.float32)
            for n, spec in attention_zoo.registry.entry(name).inputs.items()}
  loss = lambda q, k, v, inputs: jnp.sum(
      attend(q, k, v, **(call or {}), **inputs).astype(jnp.float32) ** 2)
  compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3))).lower(
      shape, shape, shape, inputs).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def table(lengths=(4096, 8192, 16384)) -> str:
  """Markdown: MiB per case and length, and the ratio to softmax at each length."""
  base = {t: forward_backward_temp_bytes("softmax", t) for t in lengths}
  rows = []
  for label, name, options, call in CASES:
    cells = []
    for t in lengths:
      size = base[t] if name == "softmax" else forward_backward_temp_bytes(name, t, options, call)
      cells.append(f"{size / 2**20:,.0f} MiB" + ("" if name == "softmax" else
                                                   f" ({size / base[t]:.3f}x)"))
    rows.append([label, *cells])
  return tables.markdown(["variant", *(f"T={t}" for t in lengths)], rows)


if __name__ == "__main__":
  print("Forward+backward temporary memory (XLA memory_analysis), B=1, N=8, H=64, float32;")
  print("in brackets: the ratio to softmax at the same length.\n")
  print(table())
