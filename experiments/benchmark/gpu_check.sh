#!/usr/bin/env bash
# The GPU check (issue 14), about ten minutes on an H100/H200: the quick tests that exercise
# the kernels on the GPU (cuDNN's test runs only there), then the attention benchmark in
# bfloat16 and float32 against jax.nn.dot_product_attention (xla, cudnn) and PyTorch's SDPA
# if installed. Prints the tables for the README; name the GPU beside them.
set -euo pipefail
cd "$(dirname "$0")/../.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import jax; print('JAX', jax.__version__, jax.devices())"
python -m pytest -q -x -p no:cacheprovider tests/test_implementations.py tests/test_contract.py \
    tests/test_segments.py tests/test_mods.py tests/test_soft_cap_and_sinks.py -m "not slow"
for dtype in bfloat16 float32; do
  python launch.py bench --config "configs/bench/gpu.py:$dtype" --workdir "runs/bench_gpu_$dtype"
  cat "runs/bench_gpu_$dtype/table.md"
done
python launch.py bench --config configs/bench/gated.py --workdir runs/bench_gpu_gated
cat runs/bench_gpu_gated/table.md
