"""The GPU table (issue 14): chunked's implementations and the recurrences against
jax.nn.dot_product_attention (xla and cudnn) and PyTorch's SDPA when installed, T = 1K-32K.

    bash experiments/benchmark/gpu_check.sh             # tests, then this, in ~10 minutes
    python launch.py bench --config configs/bench/gpu.py:bfloat16 --workdir runs/bench_gpu_bf16

Targets on an H100/H200: chunked (its fastest implementation) within 1.2x of cuDNN at
T = 8K bfloat16, forward and forward+backward; the gated and linear families chunkwise at
least as fast as causal cuDNN attention at T = 8K. Not measured yet: no GPU has been lent.
"""

from configs.bench import attention


def get_config(dtype: str = "bfloat16"):
  if dtype not in ("bfloat16", "float32"):
    raise ValueError(f"configs/bench/gpu.py:{dtype}: choose bfloat16 or float32")
  c = attention.get_config().unlock()
  c.variants = ("chunked", "chunked:implementation='pallas'", "chunked:implementation='xla'",
                "linear")  # the recurrences: configs/bench/gated.py (their inputs, causal)
  c.lengths = (1024, 2048, 4096, 8192, 16384, 32768)
  c.dtype = dtype
  c.repeats = 10
  c.seconds_per_case = 10.0
  c.processes = 1  # the GPU check must fit its ten minutes
  return c.lock()
