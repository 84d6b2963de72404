# attention_zoo is the installed package (`pip install -r requirements.txt` installs this
# checkout editable); experiments/, configs/ and tests/ are imported from the repository root,
# the working directory of `python -m pytest`.

import os

import jax

import attention_zoo
import pytest

# On a GPU, JAX computes float32 matmuls in TF32 by default (10 mantissa bits): the H200
# check failed 82 exactness tests by ~1e-3, the variants and their references alike. The
# tests compare float32 to float64 oracles, so there they run at full float32, as on CPU,
# where "highest" is what float32 matmuls already are.
if jax.default_backend() != "cpu":
  jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(autouse=True, scope="session")
def _one_compilation_cache_for_child_processes(tmp_path_factory):
  """The suite's child processes (sweep runs, runs on 1-8 devices, kills and resumes)
  compile the same tiny programs again and again: they share one persistent compilation
  cache, as tests/test_rundir.py's kill tests always have. It holds compiled XLA programs
  only (every computation still runs). The tests' own process is left as it is: JAX read
  its environment when it was imported."""
  os.environ["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("xla_cache"))
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  yield


@pytest.fixture(autouse=True)
def _ring_mesh(request):
  """Tests parameterized over every variant run `ring` under a one-device mesh with its
  `sequence` axis (ring attention needs a mesh; tests/test_ring.py uses 2, 4 and 8 devices)."""
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
