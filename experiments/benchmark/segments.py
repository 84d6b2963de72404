"""Document masking (packed rows, `segment_ids`) with and without block skipping.

    python -m experiments.benchmark.segments            # T = 8192, 8 documents: ~1 minute
    python -m experiments.benchmark.segments 8192 8 128 # the same with 128 x 128 blocks

`chunked` with `segment_ids` skips every block whose query and key id ranges do not overlap;
the same pairs given as a dense mask are applied on every block (no skipping). Both
compute the same output; the table gives their times (forward, forward+backward), the
blocks the forward pass computes, and the ratio, measured in this process.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

import attention_zoo
from attention_zoo import chunked
from experiments import tables
from experiments.benchmark import measure


def main(T: int = 8192, documents: int = 8, block: int | None = None, heads: int = 8,
         head_dim: int = 64) -> str:
  """`block`: query and key chunk size (None: chunked's defaults)."""
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(1, T, heads, head_dim)), jnp.float32)
             for _ in range(3))
  cuts = np.sort(rng.choice(np.arange(1, T), documents - 1, replace=False))
  ids = jnp.asarray(np.searchsorted(cuts, np.arange(T), side="right")[None], jnp.int32)
  mask = ids[:, None, :, None] == ids[:, None, None, :]
  blocks = dict(query_chunk_size=block or chunked.DEFAULT_QUERY_CHUNK_SIZE,
                key_chunk_size=block or chunked.DEFAULT_KEY_CHUNK_SIZE)
  attend = attention_zoo.get("chunked", **blocks)
  cases = {"segment_ids (skips blocks)": (dict(segment_ids=ids), None),
           "dense mask (every block)": ({}, mask)}
  rows, medians = [], {}
  for label, (call, m) in cases.items():
    forward = lambda q, k, v, m=m, call=call: attend(q, k, v, mask=m, **call)
    loss = lambda q, k, v, f=forward: jnp.sum(f(q, k, v))
    backward = jax.grad(loss, (0, 1, 2))
    times = [measure.measure(f, (q, k, v), repeats=5, seconds=30,
                             budget_bytes=measure.memory_budget_bytes()) for f in (forward,
                                                                                  backward)]
    medians[label] = [t.median_ms for t in times]
    visited = chunked.visited_blocks(q, k, v, mask=m, **blocks, **call)
    rows.append([label, *(tables.number(t.median_ms, ".0f", " ms") for t in times), visited])
  base = medians["dense mask (every block)"]
  for row, label in zip(rows, medians):
    row.append(" / ".join(f"{b / t:.1f}x" for b, t in zip(base, medians[label])))
  title = "chunked %dx%d, T = %d, %d documents" % (*blocks.values(), T, documents)
  table = tables.markdown([title, "forward",
                           "forward+backward", "blocks computed", "speed-up (fwd / fwd+bwd)"],
                          rows)
  print(table)
  return table


if __name__ == "__main__":
  main(*(int(a) for a in sys.argv[1:]))
