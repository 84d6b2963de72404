"""Published efficiency tables reproduced: Rabe & Staats (2021) and Long Range Arena (2020).

Only figures quoted from the papers' text are printed beside ours (the rest are marked
'—'); each function returns rows and a markdown table with ours and theirs side by side.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import attention_zoo
from attention_zoo import registry
from experiments import objectives, optimizer, train
from experiments import tables
from experiments.benchmark import measure
from experiments.benchmark.attention import parse_variant
from experiments.model import TransformerConfig
from experiments.train_state import TrainState

# Rabe & Staats, "Self-attention Does Not Need O(n^2) Memory" (2021), Tables 2 and 3, at
# n = 2^14 on one TPUv3 with bf16 inputs (the abstract: 59x and 32x less memory).
RABE_STAATS = {2**14: dict(standard_inference=1024.0, efficient_inference=17.0,
                           standard_differentiation=2048.0, efficient_differentiation=64.0,
                           inference_speed=-0.13, differentiation_speed=-0.35)}

# Tay et al., "Long Range Arena" (2020), Table 2 (efficiency, byte-level text, TPU V3):
# steps per second and peak memory (GB) at 1K, 2K, 3K, 4K; the other models at 4K only.
LRA_SOFTMAX = {1024: (8.1, 0.85), 2048: (4.9, 2.65), 3072: (2.3, 5.51), 4096: (1.4, 9.48)}
LRA_AT_4K = {"local": (5.3, 1.37), "linear": (5.6, 1.03), "favor": (5.7, 1.06)}


def rabe_staats(config) -> tuple[list[dict], str]:
  """Memory overhead (XLA temporaries) of softmax and chunked for n = 2^8 ... and speed."""
  budget = measure.memory_budget_bytes(config.memory_fraction)
  dtype = jnp.dtype(config.dtype)
  variants = {"standard": attention_zoo.get("softmax"),
              "efficient": attention_zoo.get("chunked", **dict(config.chunked_options))}
  rows = []
  for n in (2**e for e in range(config.min_log2, config.max_log2 + 1)):
    shape = jax.ShapeDtypeStruct((1, n, 1, config.head_dim), dtype)
    row = {"n": n}
    for mode in ("inference", "differentiation"):
      for label, attend in variants.items():
        fn = attend if mode == "inference" else jax.grad(
            lambda q, k, v, f=attend: jnp.sum(f(q, k, v).astype(jnp.float32)), (0, 1, 2))
        compiled = jax.jit(fn).lower(shape, shape, shape).compile()
        temp = compiled.memory_analysis().temp_size_in_bytes
        row[f"{label}_{mode}_mib"] = temp / 2**20
        if n <= config.max_timed_length:
          args = [jax.random.normal(jax.random.key(i), shape.shape, dtype) for i in range(3)]
          m = measure.measure(fn, args, repeats=config.repeats, seconds=config.seconds_per_case,
                              budget_bytes=budget)
          row[f"{label}_{mode}_ms"] = m.median_ms
          row[f"{label}_{mode}_status"] = m.status
      standard, efficient = row.get(f"standard_{mode}_ms"), row.get(f"efficient_{mode}_ms")
      row[f"{mode}_speed"] = standard / efficient - 1 if standard and efficient else None
    rows.append(row)
    print(f"  n = 2^{int(np.log2(n))}: " + ", ".join(
        f"{k}={v:.3g}" for k, v in row.items() if isinstance(v, float)), flush=True)
  return rows, _rabe_staats_table(rows, config)


def _rabe_staats_table(rows, config) -> str:
  speed = lambda v: tables.number(v and 100 * v, "+.0f", "%")
  body = []
  for r in rows:
    paper = RABE_STAATS.get(r["n"], {})
    cells = [f"2^{int(np.log2(r['n']))}"]
    for mode in ("inference", "differentiation"):
      std, eff = r[f"standard_{mode}_mib"], r[f"efficient_{mode}_mib"]
      theirs = tables.number(paper[f"standard_{mode}"] / paper[f"efficient_{mode}"]
                             if paper else None, ".0f", "x")
      cells += [f"{std:,.1f} MiB", f"{eff:,.2f} MiB", f"{std / max(eff, 1e-9):,.0f}x ({theirs})"]
    for mode in ("inference", "differentiation"):
      cells.append(f"{speed(r.get(f'{mode}_speed'))} ({speed(paper.get(f'{mode}_speed'))})")
    body.append(cells)
  return "\n".join([
      f"Memory overhead (XLA temporaries) and relative speed of chunked vs standard "
      f"attention; ours: {config.dtype}, head dim {config.head_dim}, one head, "
      f"{jax.devices()[0].device_kind}; paper: bf16 on one TPUv3. Speed: how much faster "
      "chunked runs than standard (negative: slower).", "",
      tables.markdown(["n", "inference: standard", "chunked", "ratio (paper)",
                       "differentiation: standard", "chunked", "ratio (paper)",
                       "speed, inference (paper)", "speed, differentiation (paper)"], body)])


def lra_efficiency(config) -> tuple[list[dict], str]:
  """Train-step speed and memory of every variant relative to softmax at 1K-4K."""
  budget = measure.memory_budget_bytes(config.memory_fraction)
  rows = []
  for length in config.lengths:
    for spec in config.variants:
      name, options = parse_variant(spec)
      step, args = _lra_train_step(config, name, options, length)
      m = measure.measure(step, args, repeats=config.repeats, seconds=config.seconds_per_case,
                          budget_bytes=budget)
      rows.append(dict(variant=spec, length=length, median_ms=m.median_ms,
                       memory_mib=m.memory_mib, status=m.status,
                       steps_per_second=1e3 / m.median_ms if m.median_ms else None))
      print(f"  {spec} at {length}: {m.median_ms and round(m.median_ms, 1)} ms, "
            f"{m.memory_mib and round(m.memory_mib)} MiB ({m.status})", flush=True)
  return rows, _lra_table(rows, config)


def _lra_train_step(config, name, options, length):
  """One training step of the byte-level classifier (a one-token seq2seq answer)."""
  model = TransformerConfig(  # config.model's fields over the model's defaults
      vocab_size=259, **{**config.model.to_dict(), "attention": name},
      attention_options=((name, registry.frozen(options)),))
  tx = optimizer.get_optimizer("adamw", optax.constant_schedule(1e-3), b1=0.9, b2=0.98,
                               weight_decay=0.0, grad_clip=1.0)
  state = TrainState.create(model, tx, seed=0)
  B = config.batch_size
  batch = dict(inputs=jax.random.randint(jax.random.key(1), (B, length), 3, 259),
               input_lengths=jnp.full((B,), length, jnp.int32),
               decoder_inputs=jnp.ones((B, 1), jnp.int32), targets=jnp.full((B, 1), 3, jnp.int32),
               target_lengths=jnp.ones((B,), jnp.int32))
  return functools.partial(train.train_step, objectives.SEQ2SEQ, jax.random.key(0)), (state, batch)


def _lra_table(rows, config) -> str:
  by = {(r["variant"], r["length"]): r for r in rows}
  m = config.model
  body = []
  for spec in config.variants:
    speed, memory = [], []
    for L in config.lengths:
      r, base = by[(spec, L)], by[("softmax", L)]
      name, options = parse_variant(spec)
      name = options.get("feature_map") if options.get("feature_map") == "favor" else name
      if spec == "softmax":
        paper = LRA_SOFTMAX.get(L)
        speed.append(_cell(r["steps_per_second"], "{:.2f}", paper and f"{paper[0]}"))
        memory.append(_cell(r["memory_mib"], "{:,.0f} MiB", paper and f"{paper[1]} GB"))
        continue
      paper = LRA_AT_4K.get(name) if L == 4096 else None
      ratio = lambda a, b: a / b if a and b else None
      speed.append(_cell(ratio(r["steps_per_second"], base["steps_per_second"]), "{:.2f}x",
                         paper and f"{paper[0]}x"))
      memory.append(_cell(ratio(r["memory_mib"], base["memory_mib"]), "{:.2f}x",
                          paper and f"{paper[1] / LRA_SOFTMAX[4096][1]:.2f}x"))
    body.append([spec, *speed, *memory])
  return "\n".join([
      f"Train step of a {m.num_encoder_layers}-layer encoder (d={m.d_model}, "
      f"{m.num_heads} heads, MLP {m.d_ff}), batch {config.batch_size}, "
      f"on {jax.devices()[0].device_kind}; relative to softmax at the same length. "
      "Paper: batch 32 on TPU V3.", "",
      tables.markdown(["variant", *(f"{_k(L)} steps/s (paper)" for L in config.lengths),
                       *(f"{_k(L)} memory (paper)" for L in config.lengths)], body)])


def _k(length: int) -> str:
  return f"{length // 1024}K" if length % 1024 == 0 else str(length)


def _cell(value, fmt, paper) -> str:
  return (tables.MISSING if value is None else fmt.format(value)) + f" ({paper or tables.MISSING})"
