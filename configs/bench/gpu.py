"""The GPU table (issue 14): chunked's implementations and the recurrences against
jax.nn.dot_product_attention (xla and cudnn) and PyTorch's SDPA when installed, T = 2K-32K.

    bash experiments/benchmark/gpu_check.sh             # tests, then this, in ~10 minutes
    python launch.py bench --config configs/bench/gpu.py:bfloat16 --workdir runs/bench_gpu_bf16

Sized for the check's ten minutes (compiling dominates on a GPU: ~7 cases a length and
setting): T = 2K, 8K, 32K in bfloat16, 8K in float32; batch 4 so that the short lengths are
not bound by launching kernels. `--config.lengths=...` for the whole 1K-32K range.

Targets on an H100/H200: chunked (its fastest implementation) within 1.2x of cuDNN at
T = 8K bfloat16, forward and forward+backward; the gated and linear families chunkwise at
least as fast as causal cuDNN attention at T = 8K. Measured on an H200 (README; every
table in docs/gpu_check_h200.md): the first met (chunked's default there is cuDNN's
kernel), the second missed (1.6-7x causal cuDNN's time).
"""

from configs.bench import attention


def get_config(dtype: str = "bfloat16"):
  if dtype not in ("bfloat16", "float32"):
    raise ValueError(f"configs/bench/gpu.py:{dtype}: choose bfloat16 or float32")
  c = attention.get_config().unlock()
  c.variants = ("chunked", "chunked:implementation='pallas'", "chunked:implementation='xla'",
                "linear")  # the recurrences: configs/bench/gated.py (their inputs, causal)
  c.lengths = (2048, 8192, 32768) if dtype == "bfloat16" else (8192,)
  c.dtype = dtype
  c.batch = 4
  c.repeats = 10
  c.seconds_per_case = 10.0
  c.processes = 1  # the GPU check must fit its ten minutes
  return c.lock()
