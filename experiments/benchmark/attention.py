"""Speed and memory of every attention variant against JAX's own, over a grid of shapes.

One row per (variant, length, causal, mode): median time with its range, compile time,
compiled memory, achieved FLOP/s and its fraction of the matmul peak measured in the
same run (for variants that compute dense attention), and the ratio to `jax` timed in
the same run.

Inside one process a CPU has slow phases that come and go (a case's median once doubled
between two runs of the same code), so with `config.processes` > 1 the whole grid is timed
in that many fresh processes, one after another: each case reports its best median, with
the range of the processes' medians as its spread, and the ratios are taken between best
medians. JAX's matmul peak (and PyTorch's, when installed) is measured in each process and
the best printed above the table.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import json
import os
import tempfile

import jax
import jax.numpy as jnp

import attention_zoo
from experiments import children, tables
from experiments.benchmark import measure, peers

# Variants whose work is the dense T·S product (possibly skipping causal blocks), so that
# dense-attention FLOP/s is their real throughput. local and linear do less work.
DENSE = ("jax", "jax-cudnn", "torch", "softmax", "chunked")


def parse_variant(spec: str) -> tuple[str, dict]:
  """'name' or 'name:option=value:...' (values are Python literals) -> (name, options)."""
  name, *pairs = spec.split(":")
  return name, {k: ast.literal_eval(v) for k, v in (p.split("=", 1) for p in pairs)}


def attention_flops(batch, heads, length, head_dim, is_causal, backward) -> float:
  """Useful FLOPs of dense attention: 2 matmuls forward, 4 more backward; half if causal."""
  forward = 4.0 * batch * heads * length * length * head_dim
  return forward * (3 if backward else 1) * (0.5 if is_causal else 1)


def _loss_fn(attend, is_causal, backward):
  call = lambda q, k, v: attend(q, k, v, is_causal=is_causal)
  if not backward:
    return call
  return jax.grad(lambda q, k, v: jnp.sum(call(q, k, v).astype(jnp.float32) ** 2), (0, 1, 2))


def run(config) -> list[dict]:
  """Every case of the grid: in this process, or the best of `config.processes` fresh ones."""
  if config.processes <= 1:
    return _run_here(config)
  if jax.default_backend() != "cpu":  # this process holds the accelerator already
    raise ValueError(f"config.processes={config.processes}: fresh processes time the CPU; on "
                     f"{jax.default_backend()} set --config.processes=1")
  return best_of([_run_in_fresh_process(config, i) for i in range(config.processes)])


def run_with_table(config) -> tuple[list[dict], str]:
  rows = run(config)
  return rows, summary_table(rows)


def _run_in_fresh_process(config, index: int) -> list[dict]:
  print(f"process {index + 1} of {config.processes}", flush=True)
  with tempfile.TemporaryDirectory() as scratch:
    given, out = os.path.join(scratch, "config.json"), os.path.join(scratch, "rows.json")
    with open(given, "w", encoding="utf-8") as f:
      f.write(config.to_json())
    oom_kills = children.oom_kills()
    child = children.wait(children.start(f"""
        import json, ml_collections
        from experiments.benchmark import attention
        config = ml_collections.ConfigDict(json.load(open({given!r})))
        json.dump(attention._run_here(config), open({out!r}, "w"))
        """, stdout=None, stderr=None), oom_before=oom_kills)  # progress: to the terminal
    if child.reason:
      raise RuntimeError(f"attention benchmark, process {index + 1} of {config.processes}: "
                         f"{child.reason}")
    with open(out, encoding="utf-8") as f:
      return json.load(f)


def best_of(runs: list[list[dict]]) -> list[dict]:
  """One row per case from several processes' rows: the run with the smallest median
  (its FLOP/s and its range within that process kept), `medians_ms` of every process that
  timed it, and the share of the peak and the ratio to `jax` taken from best medians and
  the best peak."""
  case = lambda r: (r["variant"], r["length"], r["causal"], r["mode"])
  timed = lambda rows: [r for r in rows if r["median_ms"]]
  peak = max(r["matmul_peak_gflops"] for rows in runs for r in rows)
  torch_peak = max((r.get("torch_matmul_peak_gflops") or 0 for rows in runs for r in rows),
                   default=0) or None
  best = {}
  for rows in zip(*runs, strict=True):
    if len({case(r) for r in rows}) != 1:
      raise RuntimeError(f"attention benchmark: processes timed different cases: {rows}")
    ok = timed(rows)
    row = dict(min(ok, key=lambda r: r["median_ms"]) if ok else rows[0])
    row.update(medians_ms=[r["median_ms"] for r in ok], processes=len(rows),
               matmul_peak_gflops=peak, torch_matmul_peak_gflops=torch_peak)
    if row["gflops"]:  # the chosen run's FLOP/s, against the best peak of all the runs
      row["peak_fraction"] = row["gflops"] / peak
    best[case(row)] = row
  for row in best.values():
    base = best[("jax", row["length"], row["causal"], row["mode"])]["median_ms"]
    row["speedup_vs_jax"] = base / row["median_ms"] if base and row["median_ms"] else None
  return list(best.values())


def _run_here(config) -> list[dict]:
  dtype = jnp.dtype(config.dtype)
  peak = measure.matmul_peak_gflops(dtype)
  budget = measure.memory_budget_bytes(config.memory_fraction)
  candidates = dict(peers.baselines())
  for spec in config.variants:
    name, options = parse_variant(spec)
    candidates[spec] = attention_zoo.get(name, **options)
  torch_absent = peers.torch_absence() if config.torch else None  # then named in the table
  torch_peak = (peers.torch_matmul_peak_gflops(config.dtype)
                if config.torch and not torch_absent else None)
  rows = []
  for length, is_causal, mode in itertools.product(config.lengths, config.causal, config.modes):
    shape = (config.batch, length, config.heads, config.head_dim)
    q, k, v = (jax.random.normal(key, shape, dtype)
               for key in jax.random.split(jax.random.key(0), 3))
    backward = mode == "forward_backward"
    flops = attention_flops(config.batch, config.heads, length, config.head_dim, is_causal,
                            backward)
    found = {label: measure.measure(_loss_fn(attend, is_causal, backward), (q, k, v),
                                    repeats=config.repeats, seconds=config.seconds_per_case,
                                    budget_bytes=budget)
             for label, attend in candidates.items()}
    if config.torch:
      found["torch"] = (measure.Measurement(status=torch_absent) if torch_absent else
                        peers.time_torch(shape, config.dtype, is_causal, backward,
                                         repeats=config.repeats, seconds=config.seconds_per_case))
    base = found["jax"].median_ms
    for label, m in found.items():
      dense = label.split(":")[0] in DENSE
      rows.append(dict(
          variant=label, length=length, causal=is_causal, mode=mode, dtype=config.dtype,
          batch=config.batch, heads=config.heads, head_dim=config.head_dim,
          **dataclasses.asdict(m),
          gflops=flops / m.median_ms / 1e6 if m.median_ms and dense else None,
          peak_fraction=flops / m.median_ms / 1e6 / peak if m.median_ms and dense else None,
          matmul_peak_gflops=peak, torch_matmul_peak_gflops=torch_peak,
          speedup_vs_jax=base / m.median_ms if base and m.median_ms else None))
    print(f"  length {length:>6} causal={is_causal!s:<5} {mode:<16} " + "  ".join(
        f"{label}={m.median_ms:.1f}ms" if m.median_ms else f"{label}={m.status}"
        for label, m in found.items()), flush=True)
  return rows


def summary_table(rows: list[dict]) -> str:
  """Markdown, one row per measurement, under the matmul peaks of the run."""
  processes = rows[0].get("processes", 1) if rows else 1
  torch_peak = rows[0].get("torch_matmul_peak_gflops") if rows else None
  peaks = (f"Matmul peak ({rows[0]['dtype']}, best of the run): JAX "
           f"{rows[0]['matmul_peak_gflops']:.0f} GFLOP/s, PyTorch "
           + (f"{torch_peak:.0f} GFLOP/s" if torch_peak else "not measured") + "\n\n"
           if rows else "")
  spread = (f"best median ms (medians over {processes} processes)" if processes > 1
            else "median ms (min-max)")
  return peaks + tables.markdown(
      ["variant", "T", "causal", "mode", spread, "vs jax", "GFLOP/s", "% of peak",
       "memory MiB", "compile s"],
      [[r["variant"], r["length"], r["causal"], r["mode"], measure.time_range(r),
        tables.number(r["speedup_vs_jax"], ".2f", "x"), tables.number(r["gflops"], ".0f"),
        tables.number(r["peak_fraction"] and 100 * r["peak_fraction"], ".0f"),
        tables.number(r["memory_mib"], ",.1f"), tables.number(r["compile_seconds"], ".2f")]
       for r in rows])


def plot(rows: list[dict], directory: str) -> list[str]:
  """Time and memory against length, log-log, one line per variant; one PNG per setting."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  paths = []
  for (is_causal, mode), group in itertools.groupby(
      sorted(rows, key=lambda r: (r["causal"], r["mode"])), key=lambda r: (r["causal"], r["mode"])):
    group = list(group)
    fig, (ax_time, ax_memory) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((ax_time, "median_ms", "median time (ms)"),
                           (ax_memory, "memory_mib", "compiled memory (MiB)")):
      for variant in dict.fromkeys(r["variant"] for r in group):
        points = [r for r in group if r["variant"] == variant and r[key]]
        if points:  # cases that did not fit or run have nothing to draw
          ax.plot([r["length"] for r in points], [r[key] for r in points], marker="o",
                  label=variant)
      ax.set(xlabel="sequence length T = S", ylabel=label)
      if ax.lines:
        ax.set(xscale="log", yscale="log")
        ax.legend(fontsize=8)
      ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"{mode.replace('_', '+')}, {'causal' if is_causal else 'bidirectional'}")
    fig.tight_layout()
    path = f"{directory}/{mode}_{'causal' if is_causal else 'bidirectional'}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
  return paths
