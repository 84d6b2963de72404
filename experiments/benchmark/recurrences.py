"""The gated and delta-rule recurrences, chunkwise, against their token-by-token lax.scan form
and against causal `chunked` (exact softmax) and causal `linear`.

One row per (label, length, mode): median time with its range, compile time and compiled
memory, how many times faster than the variant's own scan recurrence (`vs scan`) and than
causal chunked (`vs chunked`), both timed in the same run.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys

import jax
import jax.numpy as jnp

import attention_zoo
from experiments import tables
from experiments.benchmark import measure
from experiments.benchmark.attention import parse_variant


def _arrays(config, name, length):
  """q, k, v and the variant's per-token inputs (its registry entry's), in their bounds."""
  shape = (config.batch, length, config.heads, config.head_dim)
  keys = jax.random.split(jax.random.key(0), 5)
  q, k, v = (jax.random.normal(key, shape, jnp.dtype(config.dtype)) for key in keys[:3])
  inputs = {}
  if name in attention_zoo.names():
    entry = attention_zoo.registry.entry(name)
    if entry.normalize_qk:  # as the layer does: the delta rule wants unit keys
      q, k = (x / jnp.linalg.norm(x.astype(jnp.float32), axis=-1, keepdims=True).astype(x.dtype)
              for x in (q, k))
    for key, (input_name, spec) in zip(keys[3:], entry.inputs.items()):
      x = jax.random.normal(key, spec.shape(shape))
      inputs[input_name] = (jax.nn.sigmoid(x) if spec.bounds == (0.0, 1.0)
                            else -jax.nn.softplus(x))  # beta in (0, 1), log gates <= 0
  return (q, k, v), inputs


def _timed(fn, backward):
  """fn(q, k, v, inputs) -> out, or the gradient of sum(out^2) w.r.t. all of them."""
  if not backward:
    return fn
  return jax.grad(lambda q, k, v, inputs: jnp.sum(fn(q, k, v, inputs).astype(jnp.float32) ** 2),
                  (0, 1, 2, 3))


def candidates(config) -> dict:
  """label -> (variant name for its inputs, fn(q, k, v, inputs)); a variant is 'name' or
  'name:option=value:...' (e.g. 'gla:chunk_form="parallel"'), its scan timed once per name."""
  found = {}
  for spec in config.variants:
    name, options = parse_variant(spec)
    attend = attention_zoo.get(name, is_causal=True, **options)
    found[spec] = (name, lambda q, k, v, inputs, attend=attend: attend(q, k, v, **inputs))
    if config.scan and f"{name} scan" not in found:
      module = sys.modules[attention_zoo.registry.entry(name).fn.__module__]
      scan = module.recurrent_scan  # the variant's token-by-token lax.scan form
      found[f"{name} scan"] = (name, lambda q, k, v, inputs, scan=scan: scan(q, k, v,
                                                                             **inputs)[0])
  for name in config.baselines:
    attend = attention_zoo.get(name, is_causal=True)
    found[name] = (name, lambda q, k, v, inputs, attend=attend: attend(q, k, v))
  return found


def _ratio(base, m):
  """How many times faster m is than base (None if either did not run)."""
  return base.median_ms / m.median_ms if base and base.median_ms and m.median_ms else None


def run(config):
  budget = measure.memory_budget_bytes(config.memory_fraction)
  rows = []
  for length, mode in itertools.product(config.lengths, config.modes):
    found = {}
    for label, (name, fn) in candidates(config).items():
      qkv, inputs = _arrays(config, name, length)
      found[label] = measure.measure(_timed(fn, mode == "forward_backward"), (*qkv, inputs),
                                     repeats=config.repeats, seconds=config.seconds_per_case,
                                     budget_bytes=budget)
    print(f"  length {length:>6} {mode:<16} " + "  ".join(
        f"{label}={m.median_ms:.1f}ms" if m.median_ms else f"{label}={m.status}"
        for label, m in found.items()), flush=True)
    for label, m in found.items():
      scan = found.get(f"{label.split(':')[0]} scan")
      rows.append(dict(variant=label, length=length, mode=mode, dtype=config.dtype,
                       batch=config.batch, heads=config.heads, head_dim=config.head_dim,
                       **dataclasses.asdict(m), vs_scan=_ratio(scan, m),
                       vs_chunked=_ratio(found.get("chunked"), m)))
  return rows, summary_table(rows)


def summary_table(rows) -> str:
  """Markdown, one row per measurement."""
  return tables.markdown(
      ["variant", "T", "mode", "median ms (min-max)", "vs scan", "vs chunked", "memory MiB",
       "compile s"],
      [[r["variant"], r["length"], r["mode"], measure.time_range(r),
        tables.number(r["vs_scan"], ".1f", "x"), tables.number(r["vs_chunked"], ".1f", "x"),
        tables.number(r["memory_mib"], ",.1f"), tables.number(r["compile_seconds"], ".2f")]
       for r in rows])
