# attention_zoo is the installed package (`pip install -r requirements.txt` installs this
# checkout editable); experiments/, configs/ and tests/ are imported from the repository root,
# the working directory of `python -m pytest`.

import os
import shutil
import tempfile

# The suite's programs are tiny, so compiling them is most of its time: XLA's backend (LLVM)
# compiles without optimization here, which cuts that by about a third (the suite: 27 -> 21
# min on 2 cores) and computes the same values (without fast-math, which XLA leaves off,
# LLVM may not reorder floating-point arithmetic). Set before JAX starts its
# backends; child processes inherit it; a level given in XLA_FLAGS is kept. Benchmarks and
# experiments run outside the suite, fully optimized.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""),
                                      "--xla_backend_optimization_level=0"]).strip()

import jax  # pylint: disable=wrong-import-position

import attention_zoo  # pylint: disable=wrong-import-position
import pytest  # pylint: disable=wrong-import-position

# On a GPU, JAX computes float32 matmuls in TF32 by default (10 mantissa bits): the H200
# check failed 82 exactness tests by ~1e-3, the variants and their references alike. The
# tests compare float32 to float64 oracles, so there they run at full float32, as on CPU,
# where "highest" is what float32 matmuls already are.
if jax.default_backend() != "cpu":
  jax.config.update("jax_default_matmul_precision", "highest")


# The suite compiles the same tiny programs again and again (a run killed and resumed, a
# config on 1 and 8 devices, a sweep's runs in child processes): one persistent compilation
# cache serves each test process (a pytest-xdist worker) and every child it starts. It
# holds compiled XLA programs only (every computation still runs). Set before any test
# module is imported, hence before the first compilation, which would otherwise fix the
# cache as off for this process.
_XLA_CACHE = tempfile.mkdtemp(prefix="attention_zoo_tests_xla_cache_")
for _name, _value in [("jax_compilation_cache_dir", _XLA_CACHE),
                      ("jax_persistent_cache_min_compile_time_secs", 0),
                      ("jax_persistent_cache_min_entry_size_bytes", 0)]:
  jax.config.update(_name, _value)
  os.environ[_name.upper()] = str(_value)


def pytest_unconfigure(config):  # pylint: disable=unused-argument
  shutil.rmtree(_XLA_CACHE, ignore_errors=True)


@pytest.fixture(autouse=True)
def _ring_mesh(request):
  """Tests parameterized over every variant run `ring` under a one-device mesh with its
  `sequence` axis (ring attention needs a mesh; tests/test_ring.py uses 2 and 8 devices)."""
  params = getattr(request.node, "callspec", None)
  if params is None or "ring" not in params.params.values():
    yield
    return
  mesh = jax.make_mesh((1,), ("sequence",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    yield


@pytest.fixture(autouse=True, scope="module")
def _fresh_compilation_caches():
  """Each test module starts without the executables of the ones before: one process runs
  the whole suite, and thousands of compiled programs held to its end only cost memory."""
  yield
  attention_zoo.registry._get.cache_clear()  # pylint: disable=protected-access
  jax.clear_caches()
