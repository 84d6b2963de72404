"""Time attention variants against jax.nn.dot_product_attention, in one run.

    python -m experiments.speed --length 4096                 # ~1 min on 2 CPU cores
    python -m experiments.speed --length 8192 --causal --variants local:local_window_size=256,0

Each figure is the median of --repeats runs after one warm-up (compile) run; ratios
are against `jax.nn.dot_product_attention(implementation='xla')` timed in the same run.
"""

from __future__ import annotations

import argparse
import ast
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import attention_zoo

DEFAULT_VARIANTS = ("chunked", "local:local_window_size=256,256", "linear")


def median_ms(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def parse_variant(spec: str):
  """'name:option=value:option=value' -> (name, options); values are Python literals."""
  name, *pairs = spec.split(":")
  options = {}
  for pair in pairs:
    option, value = pair.split("=", 1)
    options[option] = ast.literal_eval(value)
  return name, options


def time_variant(attend, q, k, v, *, is_causal: bool, repeats: int) -> tuple[float, float]:
  call = lambda q, k, v: attend(q, k, v, is_causal=is_causal)
  loss = lambda q, k, v: jnp.sum(call(q, k, v).astype(jnp.float32) ** 2)
  return (median_ms(jax.jit(call), q, k, v, repeats=repeats),
          median_ms(jax.jit(jax.grad(loss, argnums=(0, 1, 2))), q, k, v, repeats=repeats))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--length", type=int, default=4096, help="T = S")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--head-dim", type=int, default=64)
  parser.add_argument("--causal", action="store_true")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS,
                      help="name[:option=value...], e.g. chunked:query_chunk_size=256")
  args = parser.parse_args(argv)
  shape = (args.batch, args.length, args.heads, args.head_dim)
  q, k, v = (jax.random.normal(key, shape) for key in jax.random.split(jax.random.key(0), 3))
  dense_flops = 4 * np.prod(shape) * args.length * (0.5 if args.causal else 1.0)

  baseline = lambda q, k, v, is_causal: jax.nn.dot_product_attention(
      q, k, v, is_causal=is_causal, implementation="xla")
  rows = [("jax.nn.dot_product_attention", *time_variant(
      baseline, q, k, v, is_causal=args.causal, repeats=args.repeats))]
  for spec in args.variants:
    name, options = parse_variant(spec)
    rows.append((spec, *time_variant(attention_zoo.get(name, **options), q, k, v,
                                     is_causal=args.causal, repeats=args.repeats)))

  print(f"B={args.batch} T=S={args.length} N={args.heads} H={args.head_dim} float32 "
        f"causal={args.causal} on {jax.devices()[0].device_kind}; median of {args.repeats}")
  print("| variant | forward ms | vs jax | dense-equivalent GFLOP/s | forward+backward ms "
        "| vs jax |\n|---|---|---|---|---|---|")
  base_fwd, base_both = rows[0][1], rows[0][2]
  for label, fwd, both in rows:
    print(f"| {label} | {fwd:.1f} | {base_fwd / fwd:.2f}x | {dense_flops / fwd / 1e6:.0f} | "
          f"{both:.1f} | {base_both / both:.2f}x |")


if __name__ == "__main__":
  main()
