"""The `implementation` option of softmax and chunked: Pallas's flash kernel (interpret mode
off a GPU) and the fused CPU kernel against the oracle, refusals naming the argument,
`explain`, and cuDNN on a GPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_zoo
from attention_zoo import cpu_kernel, implementations, registry
from tests import devices, oracle

NAMES = [n for n in attention_zoo.names() if "implementation" in attention_zoo.options(n)]


def _arrays(B, T, S, N, K, H, dtype=jnp.float32, seed=0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(B, T, N, H)), dtype)
  k, v = (jnp.asarray(rng.normal(size=(B, S, K, H)), dtype) for _ in range(2))
  return q, k, v


def test_softmax_and_chunked_have_it():
  assert set(NAMES) == {"softmax", "chunked"}


@pytest.mark.parametrize("name", ["chunked"])  # softmax runs the same code: one case below
@pytest.mark.parametrize("shape", [(2, 13, 13, 4, 2, 16), (1, 64, 128, 2, 1, 8),
                                   (2, 37, 37, 2, 2, 8)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_pallas_matches_the_oracle(name, shape, is_causal):
  """Forward and gradients; lengths that are no multiple of its blocks, grouped heads,
  segment ids where T = S."""
  B, T, S, N, K, H = shape
  q, k, v = _arrays(*shape)
  ids = (jnp.asarray(np.sort(np.random.default_rng(1).integers(0, 3, (B, T)), 1), jnp.int32)
         if T == S else None)
  attend = attention_zoo.get(name, implementation="pallas")
  cot = jnp.asarray(np.random.default_rng(2).normal(size=q.shape), jnp.float32)
  got = lambda q, k, v: attend(q, k, v, is_causal=is_causal, segment_ids=ids)
  want = lambda q, k, v: attention_zoo.get("softmax")(q, k, v, is_causal=is_causal,
                                                      segment_ids=ids)
  np.testing.assert_allclose(got(q, k, v), want(q, k, v), atol=2e-6, rtol=2e-5)
  grads = [jax.grad(lambda *a, f=f: jnp.sum(f(*a) * cot), (0, 1, 2))(q, k, v)
           for f in (got, want)]
  for g, w in zip(*grads):
    np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-4)


def test_softmax_takes_the_same_implementations():
  q, k, v = _arrays(2, 13, 13, 4, 2, 8)
  np.testing.assert_allclose(
      attention_zoo.get("softmax", implementation="pallas")(q, k, v, is_causal=True),
      attention_zoo.get("softmax")(q, k, v, is_causal=True), atol=2e-6, rtol=2e-5)


def test_pallas_in_half_precision():
  q, k, v = _arrays(1, 20, 20, 2, 1, 16, jnp.bfloat16)
  got = attention_zoo.get("chunked", implementation="pallas")(q, k, v, is_causal=True)
  want = oracle.reference(*(x.astype(jnp.float32) for x in (q, k, v)), is_causal=True)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(got.astype(jnp.float32), want, atol=2e-2, rtol=2e-2)


REFUSED = dict(bias=jnp.zeros((1, 1, 8, 8)), mask=jnp.ones((1, 1, 8, 8), bool),
               query_seq_lengths=jnp.array([4]), key_value_seq_lengths=jnp.array([4]),
               local_window_size=(2, 2), logit_soft_cap=5.0, sinks=jnp.zeros(2),
               return_residual=True)


LENGTHS = {"query_seq_lengths", "key_value_seq_lengths"}  # the cpu kernel takes them


@pytest.mark.parametrize("implementation,argument", [
    *(("pallas", a) for a in sorted(REFUSED)),
    *(("cpu", a) for a in sorted(set(REFUSED) - LENGTHS))])
def test_kernels_refuse_what_they_cannot_honour(implementation, argument):
  q, k, v = _arrays(1, 8, 8, 2, 1, 8)
  with pytest.raises(NotImplementedError, match=f"^chunked attention with implementation="
                                                f"'{implementation}' does not support: "
                                                f"{argument}"):
    attention_zoo.get("chunked", implementation=implementation)(
        q, k, v, **{argument: REFUSED[argument]})


# The kernel's vector width (8 or 16 floats) that this CPU does not choose: tested too.
OTHER_VECTOR_FLOATS = 24 - cpu_kernel.native_vector_floats()
CPU_KERNEL = pytest.mark.skipif(cpu_kernel.unavailable() is not None or
                                jax.default_backend() != "cpu",
                                reason=f"the cpu kernel: {cpu_kernel.unavailable()}")


@CPU_KERNEL
@pytest.mark.parametrize("shape", [
    (2, 300, 300, 4, 2, 16),  # no multiple of the forward (256) or backward (128) blocks
    (1, 77, 530, 4, 1, 64),   # T < S, one key head for four query heads
    (1, 530, 77, 2, 2, 12),   # T > S: under causal masking rows past S see every key
    (1, 1, 1, 1, 1, 4)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_cpu_kernel_matches_the_oracle(shape, is_causal):
  """Forward and gradients against float64 attention: at most 3x the error of XLA's own
  float32 attention (other float32 sums, base-2 scores and a 2-ulp exp2 separate them: up
  to 2.2x measured, and XLA's own error moves by 10% from run to run; a wrong mask or a
  missed rescaling is off by 1e-2 and more). Queries scaled up so that a row's maximum
  moves from key block to key block (the online softmax's rescaling) and the scores span a
  float32 exponent range."""
  _check_cpu_kernel(lambda q, k, v: attention_zoo.get("chunked", implementation="cpu")(
      q, k, v, is_causal=is_causal), shape, is_causal)


@CPU_KERNEL
@pytest.mark.parametrize("shape,is_causal", [((2, 300, 300, 4, 2, 16), False),
                                             ((2, 300, 300, 4, 2, 16), True),
                                             ((1, 530, 77, 2, 2, 12), True),
                                             ((1, 139, 139, 2, 1, 16), False)])
def test_the_cpu_kernels_other_vector_width_matches_the_oracle(shape, is_causal):
  """The layout this CPU does not choose (AVX-512's 12 x 32 tiles on an AVX2 machine, AVX2's
  6 x 16 on an AVX-512 one), so that both are tested wherever the suite runs."""
  _check_cpu_kernel(lambda q, k, v: cpu_kernel.flash(
      q, k, v, shape[-1] ** -0.5, is_causal, vector_floats=OTHER_VECTOR_FLOATS), shape,
                    is_causal)


@CPU_KERNEL
@pytest.mark.parametrize("floats", ["native", "other"])
@pytest.mark.parametrize("is_causal", [False, True])
def test_cpu_kernel_with_padding_lengths_matches_the_oracle(floats, is_causal):
  """Query and key lengths per batch row, none a multiple of a block (forward 256 x 128,
  backward 128 x 128); a batch row with no keys and no queries, one with queries and no
  keys. Rows past a query length and rows that see no key are zeros (the oracle, JAX's,
  averages the values there: it is compared on the rows that see a key), and nothing flows
  back from them (the kernel's output is differentiated whole)."""
  floats = cpu_kernel.native_vector_floats() if floats == "native" else OTHER_VECTOR_FLOATS
  lengths = dict(query_seq_lengths=jnp.array([300, 131, 0, 50], jnp.int32),
                 key_value_seq_lengths=jnp.array([257, 300, 0, 0], jnp.int32))
  live = oracle.live_rows(4, 4, 300, 300, is_causal=is_causal, **lengths)
  kernel = lambda q, k, v: cpu_kernel.flash(q, k, v, 16 ** -0.5, is_causal, floats, **lengths)
  q, k, v = _arrays(4, 300, 300, 4, 2, 16)
  out = kernel(q, k, v)
  assert not np.asarray(out * (1 - live)).any()
  _check_cpu_kernel(kernel, (4, 300, 300, 4, 2, 16), is_causal,
                    lambda *a: oracle.reference(*a, is_causal=is_causal, **lengths) * live)


def _check_cpu_kernel(kernel, shape, is_causal, xla=None):
  q, k, v = _arrays(*shape)
  q = 4 * q
  cot = jnp.asarray(np.random.default_rng(2).normal(size=q.shape), jnp.float32)
  xla = xla or (lambda q, k, v: oracle.reference(q, k, v, is_causal=is_causal))
  with_grads = lambda f, *a: (f(*a), jax.grad(lambda *a: jnp.sum(f(*a) * cot), (0, 1, 2))(*a))
  with jax.enable_x64(True):
    want = jax.tree.map(np.asarray, with_grads(xla, *(x.astype(jnp.float64) for x in (q, k, v))))
  err = lambda got: [float(np.abs(np.asarray(g, np.float64) - w).max())
                     for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want))]
  got, xla_err = err(with_grads(kernel, q, k, v)), err(with_grads(xla, q, k, v))
  assert all(g <= 3 * max(x, 1e-7) for g, x in zip(got, xla_err)), (got, xla_err)


@CPU_KERNEL
def test_cpu_kernel_under_jit_and_vmap_and_with_nan():
  q, k, v = _arrays(3, 40, 40, 2, 1, 8)
  attend = attention_zoo.get("softmax", implementation="cpu")
  got = jax.jit(jax.vmap(lambda q, k, v: attend(q[None], k[None], v[None], scale=0.3)[0]))
  np.testing.assert_allclose(got(q, k, v), oracle.reference(q, k, v, scale=0.3),
                             atol=2e-6, rtol=2e-5)
  q = q.at[1, 5, 1, 3].set(jnp.nan)  # NaN stays in its row, as in the oracle
  np.testing.assert_array_equal(jnp.isnan(attend(q, k, v)),
                                jnp.isnan(oracle.reference(q, k, v)))
  assert jnp.isnan(attend(q, k, v)).any()
  # A NaN key past the first key block, causal: exactly the rows that see it turn NaN.
  q, k, v = _arrays(1, 300, 300, 2, 1, 16)
  k = k.at[0, 200, 0, 3].set(jnp.nan)
  np.testing.assert_array_equal(jnp.isnan(attend(q, k, v, is_causal=True)),
                                jnp.isnan(oracle.reference(q, k, v, is_causal=True)))
  assert jnp.isnan(attend(q, k, v, is_causal=True)[0, 200:]).all()
  assert not jnp.isnan(attend(q, k, v, is_causal=True)[0, :200]).any()


CPU_KERNEL_ON_2_DEVICES = """
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from attention_zoo import cpu_kernel

rng = np.random.default_rng(0)
q = np.asarray(rng.normal(size=(4, 40, 4, 8)), np.float32)
k, v = (np.asarray(rng.normal(size=(4, 40, 2, 8)), np.float32) for _ in range(2))
lengths = dict(query_seq_lengths=np.array([40, 17, 33, 5], np.int32),  # per batch row
               key_value_seq_lengths=np.array([9, 40, 21, 30], np.int32))
attend = lambda q, k, v: cpu_kernel.flash(q, k, v, 0.3, True, **lengths)
f = jax.jit(lambda q, k, v: (attend(q, k, v), jax.grad(
    lambda *a: jnp.sum(attend(*a) ** 2), (0, 1, 2))(q, k, v)))
want = jax.tree.leaves(f(q, k, v))
mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
said = {}
for name, spec in (("batch", P("data")), ("heads", P(None, None, "data"))):
  x = [jax.device_put(a, NamedSharding(mesh, spec)) for a in (q, k, v)]
  said[name] = dict(
      gathers="all-gather" in f.lower(*x).compile().as_text(),
      equal=all(np.array_equal(g, w) for g, w in zip(jax.tree.leaves(f(*x)), want)))
print(json.dumps(said))
"""


@CPU_KERNEL
def test_cpu_kernel_splits_a_batch_sharded_call_by_device():
  """Under a mesh each device runs the kernel on its batch rows (no all-gather in the
  compiled forward and backward: an FFI call alone had every device compute the whole
  batch); a sharding of another dim is gathered. Both give the one-device values exactly."""
  said = devices.run(2, CPU_KERNEL_ON_2_DEVICES)
  assert said == {"batch": dict(gathers=False, equal=True),
                  "heads": dict(gathers=True, equal=True)}


def test_cpu_kernel_checks_its_own_arguments():
  q, k, v = _arrays(1, 8, 8, 3, 2, 8)
  with pytest.raises(ValueError, match=r"^cpu_kernel.flash: query heads N=3 must be a multiple "
                                       r"of key/value heads K=2: query \(1, 8, 3, 8\)"):
    cpu_kernel.flash(q, k, v, 0.5, False)
  with pytest.raises(ValueError, match="^cpu_kernel.flash: float32 only, got bfloat16"):
    cpu_kernel.flash(*(x.astype(jnp.bfloat16) for x in (q[:, :, :2], k, v)), 0.5, False)
  with pytest.raises(ValueError, match="^cpu_kernel.flash: vector_floats must be None, 8 or "
                                       "16, got 4"):
    cpu_kernel.flash(q[:, :, :2], k, v, 0.5, False, vector_floats=4)


def test_cpu_kernel_refuses_other_platforms_dtypes_and_segments():
  q, k, v = _arrays(1, 8, 8, 2, 1, 8, jnp.bfloat16)
  with pytest.raises(NotImplementedError, match="dtype bfloat16 .the cpu kernel takes float32"):
    attention_zoo.get("softmax", implementation="cpu")(q, k, v)
  q, k, v = _arrays(1, 8, 8, 2, 1, 8)
  with pytest.raises(NotImplementedError, match="does not support: segment_ids"):
    attention_zoo.get("softmax", implementation="cpu")(q, k, v,
                                                       segment_ids=jnp.zeros((1, 8), jnp.int32))


@pytest.mark.parametrize("option", ["query_chunk_size", "key_chunk_size"])
def test_an_invalid_chunk_size_is_refused_whichever_kernel_runs(option):
  """Chunk sizes tune the xla code only; a bad one is refused before another kernel runs
  (found on a GPU, where cuDNN ran and a chunk size of 0 passed unnoticed)."""
  q, k, v = _arrays(1, 8, 8, 2, 1, 8)
  with pytest.raises(ValueError, match=f"^chunked: {option} must be a positive int"):
    registry.VARIANTS["chunked"].fn(q, k, v, implementation="pallas", **{option: 0})
  with pytest.raises(ValueError, match=f"^chunked: {option} must be a positive int"):
    attention_zoo.explain("chunked", q, k, v, **{option: 0})  # as the call would


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="the CPU's refusal")
def test_cudnn_off_a_gpu_refuses():
  q, k, v = _arrays(1, 8, 8, 2, 1, 8, jnp.bfloat16)
  with pytest.raises(NotImplementedError, match="platform 'cpu' .*cudnn needs an NVIDIA GPU"):
    attention_zoo.get("softmax", implementation="cudnn")(q, k, v)
  assert attention_zoo.explain("chunked", q, k, v, implementation="pallas") == (
      "chunked: pallas (asked for by name)")
  assert attention_zoo.explain("local", q, k, v).startswith("local: its own code")
  with pytest.raises(ValueError, match="implementation must be None or one of"):
    attention_zoo.get("chunked", implementation="triton")


def _runs_cpu_kernel(attend, q, k, v) -> bool:
  """Whether the compiled call holds the cpu kernel's custom call."""
  return "attention_zoo_flash_forward" in jax.jit(attend).lower(q, k, v).as_text()


@CPU_KERNEL
def test_none_on_a_cpu_runs_chunked_on_the_cpu_kernel_where_it_honours_the_call():
  """The kernel is chunked's fastest on a CPU (README); anything it cannot honour (a mask, a
  dtype, the xla code's own chunk sizes) makes None run the xla code, saying why."""
  q, k, v = _arrays(1, 8, 8, 2, 1, 8)
  assert attention_zoo.explain("chunked", q, k, v, is_causal=True) == (
      "chunked: cpu (the fastest on this CPU that honours the call)")
  assert _runs_cpu_kernel(attention_zoo.get("chunked", is_causal=True), q, k, v)
  mask = jnp.tril(jnp.ones((1, 1, 8, 8), bool))
  assert attention_zoo.explain("chunked", q, k, v, mask=mask) == (
      "chunked: xla (cpu cannot take mask)")
  assert not _runs_cpu_kernel(lambda *a: attention_zoo.get("chunked")(*a, mask=mask), q, k, v)
  assert attention_zoo.explain("chunked", q, k, v, query_chunk_size=4) == (
      "chunked: xla (cpu cannot take query_chunk_size=4)")
  assert not _runs_cpu_kernel(attention_zoo.get("chunked", query_chunk_size=4), q, k, v)
  half = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  assert attention_zoo.explain("chunked", *half) == (
      "chunked: xla (cpu cannot take dtype bfloat16)")
  # softmax, the dense reference, keeps its xla code unless the kernel is asked for
  assert attention_zoo.explain("softmax", q, k, v) == (
      "softmax: xla (platform 'cpu': softmax's default here is its xla code; the cpu kernel "
      "runs when asked for by name)")
  assert not _runs_cpu_kernel(attention_zoo.get("softmax"), q, k, v)
  np.testing.assert_allclose(attention_zoo.get("chunked", is_causal=True)(q, k, v),
                             oracle.reference(q, k, v, is_causal=True), atol=2e-6, rtol=2e-5)


@CPU_KERNEL
def test_none_runs_the_xla_code_where_the_cpu_kernel_cannot_be_built(monkeypatch):
  failed = "building the CPU flash kernel failed: g++: fatal error"
  monkeypatch.setattr(cpu_kernel, "build_failure", lambda: failed)
  q, k, v = _arrays(1, 8, 8, 2, 1, 8)
  assert attention_zoo.explain("chunked", q, k, v) == (
      f"chunked: xla (cpu cannot run here: this machine ({failed}))")
  assert not _runs_cpu_kernel(attention_zoo.get("chunked"), q, k, v)
  with pytest.raises(NotImplementedError, match="does not support: this machine .building"):
    attention_zoo.get("chunked", implementation="cpu")(q, k, v)


@pytest.mark.parametrize("implementation", ["pallas", "cpu", "cudnn"])
def test_a_kernel_asked_for_by_name_refuses_the_xla_codes_chunk_sizes(implementation):
  """Chunk sizes tune the xla code; a kernel with blocks of its own refuses them rather than
  ignore them (an ablation over chunk sizes must not time one kernel six times)."""
  q, k, v = _arrays(1, 8, 8, 2, 1, 8)
  with pytest.raises(NotImplementedError, match=(
      f"^chunked attention with implementation='{implementation}' does not support: "
      f"key_chunk_size=4 .an option of the xla code; {implementation} chooses its own blocks")):
    attention_zoo.get("chunked", implementation=implementation, key_chunk_size=4)(q, k, v)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN runs on an NVIDIA GPU")
@pytest.mark.parametrize("is_causal", [False, True])
def test_cudnn_matches_the_oracle_on_a_gpu(is_causal):
  q, k, v = _arrays(2, 256, 256, 4, 2, 64, jnp.bfloat16)
  lengths = jnp.array([256, 100], jnp.int32)
  got = attention_zoo.get("chunked", implementation="cudnn")(
      q, k, v, is_causal=is_causal, key_value_seq_lengths=lengths)
  want = attention_zoo.get("softmax")(q, k, v, is_causal=is_causal,
                                      key_value_seq_lengths=lengths)
  np.testing.assert_allclose(got.astype(jnp.float32), want.astype(jnp.float32), atol=2e-2)
  assert attention_zoo.explain("chunked", q, k, v, is_causal=True).startswith("chunked: cudnn")
  assert implementations.choose("chunked", None, *_dims(q, k), q.dtype,
                                dict(segment_ids=jnp.zeros((2, 256), jnp.int32)))[0] == "pallas"


def _dims(q, k):
  from attention_zoo import validation  # pylint: disable=import-outside-toplevel
  return (validation.check_inputs("chunked", q, k, k),)
