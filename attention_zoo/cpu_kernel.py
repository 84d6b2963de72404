"""The fused CPU flash-attention kernel (kernels/flash_cpu.cc) as a differentiable JAX function.

The C++ source (its own micro-kernels: no BLAS) is compiled on first use for the machine at
hand (g++ `-march=native`, vectors of 16 floats where the CPU has AVX-512F, else of 8) into a
cache folder keyed by the source, the compiler command and the CPU, then registered with XLA
as two FFI targets (forward, backward), each called through a rule that splits it by batch
under a device mesh and folds vmap into the batch. What it takes: float32, CPU, `is_causal`,
`scale` and the two padding lengths; no mask, bias, window or other argument
(implementations.refusals lists them); a CPU with AVX2 and FMA.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

from attention_zoo import validation

SOURCE = pathlib.Path(__file__).parent / "kernels" / "flash_cpu.cc"
# Block sizes (query rows, key columns). Timed on an AMD EPYC (Zen 1) at T = 4096, heads of
# 64, one thread: forward 128-1024 rows by 64-256 columns and backward 64-256 by 64-256 all
# within ~10% of these, which is within that machine's noise; not measured on other CPUs.
# The micro-kernels work in panels of 6 rows by 16 columns (AVX2) or 12 by 32 (AVX-512)
# whatever the blocks.
FORWARD_BLOCKS = (256, 128)
BACKWARD_BLOCKS = (128, 128)


def _cpuinfo(field: str) -> str:
  """The first `field` line's value in /proc/cpuinfo ("" where there is none)."""
  try:
    lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
  except OSError:
    return ""
  return next((l.split(":", 1)[-1].strip() for l in lines if l.startswith(field)), "")


def cpu_flags() -> set[str]:
  return set(_cpuinfo("flags").split())


def native_vector_floats() -> int:
  """The kernel's vector width on this CPU: 16 floats with AVX-512F, else 8 (AVX2)."""
  return 16 if "avx512f" in cpu_flags() else 8


def unavailable() -> str | None:
  """Why the kernel cannot run on this machine (None if it can)."""
  if platform.machine() not in ("x86_64", "AMD64"):
    return f"machine {platform.machine()} (the kernel is written for x86-64 with AVX2)"
  if not {"avx2", "fma"} <= cpu_flags():
    return "a CPU without AVX2 and FMA"
  if shutil.which(_compiler()) is None:
    return f"no C++ compiler ({_compiler()}) to build it with"
  return None


@functools.cache
def build_failure() -> str | None:
  """Why the kernel for this CPU's vector width could not be built or loaded here (None if
  it was): `implementation=None` then runs the xla code and says so; a build that fails is
  not retried in this process."""
  try:
    library(native_vector_floats())
  except (RuntimeError, OSError) as e:
    return str(e).splitlines()[0] + " (see cpu_kernel.library)"
  return None


def _compiler() -> str:
  return os.environ.get("CXX", "g++")


def _cache_dir() -> pathlib.Path:
  root = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(root) / "attention_zoo"


def _build_command(output: pathlib.Path, floats: int) -> list[str]:
  # -ffp-contract=fast: the source's a * b + c are FMAs. Vectors wider than the CPU's (the
  # AVX-512 layout on an AVX2 machine, for tests) took GCC 12 over 3 minutes at -O3 and take
  # 10 s at -O1; -Wno-psabi: such a build warns that its vectors are passed differently.
  level = "-O3" if floats <= native_vector_floats() else "-O1"
  return [_compiler(), level, "-march=native", "-ffp-contract=fast", "-fopenmp", "-std=c++17",
          "-shared", "-fPIC", "-Wno-psabi", f"-DZOO_VECTOR_FLOATS={floats}",
          f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", str(output)]


def _targets(floats: int) -> tuple[str, str]:
  return f"attention_zoo_flash_forward_{floats}", f"attention_zoo_flash_backward_{floats}"


@functools.cache
def library(floats: int) -> ctypes.CDLL:
  """Builds the kernel with vectors of `floats` floats for this machine (once; cached on
  disk) and registers its targets."""
  why = unavailable()
  if why:
    raise RuntimeError(f"the CPU flash kernel cannot run here: {why}")
  cpu = _cpuinfo("model name") or platform.processor()
  compiler = subprocess.run([_compiler(), "--version"],
                            capture_output=True, text=True).stdout
  key = hashlib.sha256("\n".join([
      SOURCE.read_text(), " ".join(_build_command(pathlib.Path("out"), floats)), compiler, cpu,
      " ".join(sorted(cpu_flags())), jax.__version__, jaxlib.__version__]).encode())
  path = _cache_dir() / f"flash_cpu{floats}-{key.hexdigest()[:16]}.so"
  if not path.exists():
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:  # then one atomic rename
      built = pathlib.Path(tmp) / path.name
      done = subprocess.run(_build_command(built, floats), capture_output=True, text=True)
      if done.returncode:
        raise RuntimeError(f"building the CPU flash kernel failed:\n{done.stderr[-4000:]}")
      os.replace(built, path)
  lib = ctypes.cdll.LoadLibrary(str(path))
  for target, symbol in zip(_targets(floats), (lib.FlashForwardHandler,
                                               lib.FlashBackwardHandler)):
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(symbol), platform="cpu")
  return lib


def _threads() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _attrs(scale, is_causal, blocks):
  return dict(scale=np.float32(scale), causal=bool(is_causal), block_q=np.int64(blocks[0]),
              block_k=np.int64(blocks[1]), threads=np.int64(_threads()))


def _split_by_batch(fn, rule: str):
  """`fn`, whose arrays' leading dim B indexes independent problems, as a function that a
  device mesh splits along B and vmap folds into B. (An FFI call has no sharding rule of its
  own: under a mesh XLA gathered its inputs onto every device, and each computed the whole
  batch.) Each device computes its batch rows; a sharding of any other dim is gathered (the
  kernel needs whole sequences, heads and head dims). `rule`: Shardy's einsum-like rule of
  the call, its batch factor named b. vmap cannot enter a custom_partitioning, hence the
  custom_vmap rule that merges the mapped axis into B."""
  call = custom_partitioning(fn)

  def batch_sharding(mesh, arg_shapes):
    spec = arg_shapes[0].sharding.spec
    return NamedSharding(mesh, PartitionSpec(spec[0] if len(spec) else None))

  def infer(mesh, arg_shapes, result_shape):
    return jax.tree.map(lambda _: batch_sharding(mesh, arg_shapes), result_shape)

  def partition(mesh, arg_shapes, result_shape):
    sharding = batch_sharding(mesh, arg_shapes)
    return (mesh, fn, jax.tree.map(lambda _: sharding, result_shape),
            tuple(sharding for _ in arg_shapes))

  others = [f for f in rule.replace(",", " ").replace("->", " ").split() if f != "b"]
  call.def_partition(partition, infer_sharding_from_operands=infer, sharding_rule=rule,
                     need_replication_factors=tuple(dict.fromkeys(others)))  # in rule order

  @jax.custom_batching.custom_vmap
  def batched(*args):
    return call(*args)

  @batched.def_vmap
  def _(axis_size, in_batched, *args):
    args = [a if b else jnp.broadcast_to(a, (axis_size, *a.shape))
            for a, b in zip(args, in_batched)]
    outs = batched(*(a.reshape(-1, *a.shape[2:]) for a in args))
    outs = jax.tree.map(lambda o: o.reshape(axis_size, -1, *o.shape[1:]), outs)
    return outs, jax.tree.map(lambda _: True, outs)

  return batched


@functools.cache
def _kernels(scale: float, is_causal: bool, floats: int):
  """The forward (q, k, v, query and key lengths [B] -> out, lse [B, N, T] in base 2) and the
  backward (q, k, v, lengths, out, lse, d_out -> dq, and dk, dv per query head [B, S, N, H])
  of one scale, causality and vector width, as calls split by batch."""
  library(floats)
  forward_target, backward_target = _targets(floats)
  f32 = lambda dims: jax.ShapeDtypeStruct(dims, jnp.float32)

  def forward(q, k, v, q_lengths, kv_lengths):
    B, T, N, _ = q.shape
    return jax.ffi.ffi_call(forward_target, (f32(q.shape), f32((B, N, T))))(
        q, k, v, q_lengths, kv_lengths, **_attrs(scale, is_causal, FORWARD_BLOCKS))

  def backward(q, k, v, q_lengths, kv_lengths, out, lse, d_out):
    per_head = f32((k.shape[0], k.shape[1], q.shape[2], q.shape[3]))
    return jax.ffi.ffi_call(backward_target, (f32(q.shape), per_head, per_head))(
        q, k, v, q_lengths, kv_lengths, out, lse, d_out,
        **_attrs(scale, is_causal, BACKWARD_BLOCKS))

  arrays = "b t n h, b s k h, b s k h, b, b"
  return (_split_by_batch(forward, f"{arrays} -> b t n h, b n t"),
          _split_by_batch(backward, f"{arrays}, b t n h, b n t, b t n h -> "
                                    "b t n h, b s n h, b s n h"))


def flash(q, k, v, scale: float, is_causal: bool, vector_floats: int | None = None, *,
          query_seq_lengths=None, key_value_seq_lengths=None):
  """softmax(scale q k^T) v over [B, T, N, H] queries, [B, S, K, H] keys and values (K
  divides N), float32; causal masking top-left aligned and the padding lengths (int [B], None:
  all) as jax.nn.dot_product_attention, except that a query row past its length, or one that
  sees no key, returns zeros (as this library's variants). Differentiable in reverse mode
  (its backward is a kernel too, itself not differentiable: no gradient of a gradient), not
  in forward mode. `chunked` (where implementation=None chooses it) and `softmax` call it
  after their own checks.

  vector_floats: the build's vector width, None for this CPU's (`native_vector_floats()`).
  16 on a CPU without AVX-512 runs the AVX-512 layout in pairs of AVX2 registers: slow, for
  tests.
  """
  validation.check_inputs("cpu_kernel.flash", q, k, v,  # the variants' shape contract
                          query_seq_lengths=query_seq_lengths,
                          key_value_seq_lengths=key_value_seq_lengths)
  if q.dtype != jnp.float32:
    raise ValueError(f"cpu_kernel.flash: float32 only, got {q.dtype}")
  if vector_floats not in (None, 8, 16):
    raise ValueError(f"cpu_kernel.flash: vector_floats must be None, 8 or 16, "
                     f"got {vector_floats!r}")
  length = lambda x, n: (jnp.full((q.shape[0],), n, jnp.int32) if x is None
                        else jnp.clip(jnp.asarray(x), 0, n).astype(jnp.int32))
  return _flash(q, k, v, length(query_seq_lengths, q.shape[1]),
                length(key_value_seq_lengths, k.shape[1]), float(scale), bool(is_causal),
                vector_floats or native_vector_floats())


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _flash(q, k, v, q_lengths, kv_lengths, scale: float, is_causal: bool, floats: int):
  return _kernels(scale, is_causal, floats)[0](q, k, v, q_lengths, kv_lengths)[0]


def _flash_fwd(q, k, v, q_lengths, kv_lengths, scale, is_causal, floats):
  out, lse = _kernels(scale, is_causal, floats)[0](q, k, v, q_lengths, kv_lengths)
  return out, (q, k, v, q_lengths, kv_lengths, out, lse)


def _flash_bwd(scale, is_causal, floats, residuals, d_out):
  q, k, v, q_lengths, kv_lengths, out, lse = residuals
  (B, _, N, H), S, K = q.shape, k.shape[1], k.shape[2]
  dq, dk, dv = _kernels(scale, is_causal, floats)[1](q, k, v, q_lengths, kv_lengths, out, lse,
                                                     d_out.astype(jnp.float32))
  group_sum = lambda x: x.reshape(B, S, K, N // K, H).sum(3)  # query heads -> their key head
  return dq, group_sum(dk), group_sum(dv), None, None  # lengths: integers, no gradient


_flash.defvjp(_flash_fwd, _flash_bwd)
