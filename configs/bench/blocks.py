"""chunked's block sizes on this machine: query x key blocks of 256 to 1024 rows at T = 4096,
causal and not, forward and forward+backward, against PyTorch's SDPA (when installed) and
JAX's attention; to check the default (512 x 256, attention_zoo/chunked.py) on a new CPU.

    python launch.py bench --config configs/bench/blocks.py --workdir runs/bench_blocks

Expected on the 2-core CPU: ~10 minutes (3 processes). On both AMD EPYC kinds this project
has met (JAX matmul peaks of 210 and ~440 GFLOP/s) 512 x 256 was the fastest, forward and
forward+backward; a CPU where another size wins should get it by name in chunked.py's
defaults, chosen from what the machine is, not per call.
"""

from configs.bench import attention

BLOCKS = ((512, 256), (256, 256), (512, 512), (1024, 256), (256, 512), (1024, 512))


def get_config():
  c = attention.get_config().unlock()
  c.variants = tuple(f"chunked:query_chunk_size={q}:key_chunk_size={k}" for q, k in BLOCKS)
  c.lengths = (4096,)
  return c.lock()
