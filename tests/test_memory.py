"""Forward+backward memory, read exactly from XLA's compiled programs (nothing is run).

At T = S = 8192, 8 heads, head dim 64: chunked (causal and not), local (window 256),
causal linear and the gated and delta-rule recurrences (retention, gla, deltanet,
gated_deltanet; gradients to their gates and beta too) each use at most 1/16 of softmax's
temporary memory, and doubling the length at most doubles (x2.2) each of their figures.
"""

import pytest

from experiments import memory

LINEAR_CASES = [c for c in memory.CASES if c[1] != "softmax"]


@pytest.fixture(scope="module")
def softmax_bytes():
  return memory.forward_backward_temp_bytes("softmax", 8192)


@pytest.mark.parametrize("case", LINEAR_CASES, ids=[c[0] for c in LINEAR_CASES])
def test_memory_is_a_sixteenth_of_softmax_and_grows_linearly(case, softmax_bytes):
  _, name, options, call = case
  at_8k = memory.forward_backward_temp_bytes(name, 8192, options, call)
  at_16k = memory.forward_backward_temp_bytes(name, 16384, options, call)
  assert at_8k <= softmax_bytes / 16, (at_8k, softmax_bytes)
  assert at_16k <= 2.2 * at_8k, (at_8k, at_16k)
