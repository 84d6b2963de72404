#!/usr/bin/env bash
# The GPU check (issue 14), about ten minutes on an H100/H200 (on an H200: the benchmarks
# ~3 minutes, the kernel tests ~5): the attention benchmark in bfloat16 and float32 against
# jax.nn.dot_product_attention (xla, cudnn) and PyTorch's SDPA on the same GPU if
# installed, the recurrences against causal cuDNN attention, then the kernel tests on the
# GPU (cuDNN's test runs only there). Prints the tables for the README (the GPU is named on
# them). Each step has its own time limit and a failed step does not stop the next: a lent
# GPU's minutes are few.
#
#   bash experiments/benchmark/gpu_check.sh            # writes runs/gpu_check/
#   GPU_CHECK_OUT=/elsewhere PYTHON=python3 bash experiments/benchmark/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${GPU_CHECK_OUT:-runs/gpu_check}
python=${PYTHON:-python3}
mkdir -p "$out"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # PyTorch shares the GPU in the same process
export PYTHONUNBUFFERED=1

step() {  # step SECONDS NAME COMMAND...: run it under a limit, its log in $out/NAME.log
  local seconds=$1 name=$2
  shift 2
  echo "== $name (at most ${seconds}s) =="
  timeout --signal=INT --kill-after=20 "$seconds" "$@" 2>&1 | tee "$out/$name.log"
  echo "== $name: exit ${PIPESTATUS[0]} =="
}

bench() {  # bench SECONDS NAME MODULE ARGUMENT: `launch.py bench --config
  # configs/bench/MODULE.py:ARGUMENT`, called directly: the benchmarks need JAX and
  # ml_collections alone, not the training loop's data stack that launch.py imports
  step "$1" "$2" "$python" -c "from configs.bench import $3 as c; from experiments import \
benchmark; print(benchmark.run(c.get_config('$4'), '$out/$2'))"
  [[ -f "$out/$2/table.md" ]] && cp "$out/$2/table.md" "$out/$2.md"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
"$python" -c "import jax; print('JAX', jax.__version__, jax.devices())
assert jax.default_backend() == 'gpu', 'JAX sees no GPU: the check would time the CPU'" || exit 1
bench 240 bench_bfloat16 gpu bfloat16
bench 100 bench_gated gated gpu
bench 70 bench_float32 gpu float32
step 300 tests "$python" -m pytest -q -rfE -p no:cacheprovider --durations=5 \
    tests/test_implementations.py tests/test_contract.py tests/test_gated.py \
    tests/test_segments.py tests/test_soft_cap_and_sinks.py tests/test_mods.py -m "not slow"
