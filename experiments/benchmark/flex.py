"""Score and mask functions without dense arrays: what they cost and what skipping saves.

    python -m experiments.benchmark.flex                # T = 8192: a few minutes on 2 cores
    python -m experiments.benchmark.flex 4096 128       # another T; 128 x 128 blocks

Two tables, each measured in this process (ratios are what count across machines):
- ALiBi: `chunked` with `mods.alibi` as a score_mod, against `chunked` with the same bias
  as a dense [1, N, T, T] array and against `softmax` with it, and `chunked` with no bias:
  forward+backward time and compiled memory (XLA's memory_analysis: temporaries and
  arguments).
- Memory against T (T/2 ... 4T, compiled only, nothing run): the same ALiBi cases'
  forward+backward memory, linear in T with the score_mod, quadratic with a dense bias.
- Document masking (8 packed documents of random lengths): `chunked` with `segment_ids` and
  with `mods.document` as a mask_mod (both skip blocks), against the same pairs as a dense
  mask (applied on every block): times and the blocks the forward pass computes.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

import attention_zoo
from attention_zoo import chunked, mods, softmax
from experiments import tables
from experiments.benchmark import measure

HEADS, HEAD_DIM = 8, 64


def _time_and_memory(fn, args):
  """(forward+backward measurement) of fn(*args) summed."""
  grad = jax.grad(lambda *a: jnp.sum(fn(*a)), tuple(range(len(args))))
  return measure.measure(grad, args, repeats=3, seconds=20,
                         budget_bytes=measure.memory_budget_bytes())


def alibi_table(T: int, block: int | None) -> str:
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(1, T, HEADS, HEAD_DIM)), jnp.float32)
             for _ in range(3))
  blocks = _blocks(block)
  results = {label: _time_and_memory(fn, (q, k, v))
             for label, fn in _alibi_cases(T, blocks).items()}
  base = results["chunked, no bias"]
  rows = [[label, measure.time_range(vars(r)), tables.number(r.memory_mib, ",.0f", " MiB"),
           _ratio(r.median_ms, base.median_ms), _ratio(r.memory_mib, base.memory_mib)]
          for label, r in results.items()]
  return tables.markdown([f"causal, T = {T}, {_title(blocks)}", "fwd+bwd ms", "memory",
                          "time / no bias", "memory / no bias"], rows)


def _alibi_cases(T, blocks):
  """label -> fn(q, k, v): chunked without bias, with ALiBi as a score_mod and as a dense
  [1, N, T, T] bias, and softmax with that bias."""
  fast = attention_zoo.get("chunked", **blocks)
  score_mod = mods.alibi(HEADS)
  dense = lambda: score_mod(0.0, *softmax.grid_indices(1, HEADS, 1, T, T)).reshape(
      1, HEADS, T, T)
  return {
      "chunked, no bias": lambda q, k, v: fast(q, k, v, is_causal=True),
      "chunked, ALiBi score_mod": lambda q, k, v: fast(q, k, v, is_causal=True,
                                                       score_mod=score_mod),
      "chunked, ALiBi dense bias": lambda q, k, v: fast(q, k, v, dense(), is_causal=True),
      "softmax, ALiBi dense bias": lambda q, k, v: attention_zoo.get("softmax")(
          q, k, v, dense(), is_causal=True),
  }


def memory_table(T: int, block: int | None) -> str:
  """Compiled forward+backward memory (MiB) of the ALiBi cases at T/2, T, 2T and 4T, and
  its growth from T/2 to 4T (8x the length: 8x is linear, 64x quadratic). Compiled only."""
  lengths = (T // 2, T, 2 * T, 4 * T)
  found = {}
  for n in lengths:
    shape = jax.ShapeDtypeStruct((1, n, HEADS, HEAD_DIM), jnp.float32)
    for label, fn in _alibi_cases(n, _blocks(block)).items():
      grad = jax.grad(lambda *a, fn=fn: jnp.sum(fn(*a)), (0, 1, 2))
      memory = jax.jit(grad).lower(shape, shape, shape).compile().memory_analysis()
      found.setdefault(label, []).append(
          (memory.temp_size_in_bytes + memory.argument_size_in_bytes) / 2**20)
  rows = [[label, *(tables.number(m, ",.0f") for m in mib), f"{mib[-1] / mib[0]:.1f}x"]
          for label, mib in found.items()]
  return tables.markdown([f"fwd+bwd memory (MiB), {_title(_blocks(block))}",
                          *(f"T = {n}" for n in lengths), f"{lengths[-1] // lengths[0]}x T"],
                         rows)


def document_table(T: int, block: int | None, documents: int = 8) -> str:
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(rng.normal(size=(1, T, HEADS, HEAD_DIM)), jnp.float32)
             for _ in range(3))
  cuts = np.sort(rng.choice(np.arange(1, T), documents - 1, replace=False))
  ids = jnp.asarray(np.searchsorted(cuts, np.arange(T), side="right")[None], jnp.int32)
  blocks = _blocks(block)
  attend = attention_zoo.get("chunked", **blocks)
  mask_mod = mods.document(ids)
  cases = {"segment_ids": dict(segment_ids=ids), "mask_mod (document)": dict(mask_mod=mask_mod),
           "dense mask (no skipping)": dict(mask=ids[:, None, :, None] == ids[:, None, None, :])}
  rows, medians = [], {}
  for label, call in cases.items():
    forward = measure.measure(lambda q, k, v, call=call: attend(q, k, v, **call), (q, k, v),
                              repeats=3, seconds=20, budget_bytes=measure.memory_budget_bytes())
    both = _time_and_memory(lambda q, k, v, call=call: attend(q, k, v, **call), (q, k, v))
    medians[label] = (forward.median_ms, both.median_ms)
    visited = chunked.visited_blocks(q, k, v, **blocks, **call)
    rows.append([label, measure.time_range(vars(forward)), measure.time_range(vars(both)),
                 visited])
  base = medians["dense mask (no skipping)"]
  for row, label in zip(rows, medians):
    row.append(" / ".join(_ratio(b, t) for b, t in zip(base, medians[label])))
  return tables.markdown([f"T = {T}, {documents} documents, {_title(blocks)}", "forward ms",
                          "fwd+bwd ms", "blocks computed", "speed-up (fwd / fwd+bwd)"], rows)


def _blocks(block):
  return dict(query_chunk_size=block or chunked.DEFAULT_QUERY_CHUNK_SIZE,
              key_chunk_size=block or chunked.DEFAULT_KEY_CHUNK_SIZE)


def _title(blocks):
  return "blocks %dx%d" % (blocks["query_chunk_size"], blocks["key_chunk_size"])


def _ratio(value, base):
  return tables.MISSING if value is None or base is None else f"{value / base:.2f}x"


def main(T: int = 8192, block: int | None = None) -> str:
  text = "\n\n".join([alibi_table(T, block), memory_table(T, block), document_table(T, block)])
  print(text)
  return text


if __name__ == "__main__":
  main(*(int(a) for a in sys.argv[1:]))
