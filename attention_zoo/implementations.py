"""Which kernel computes `softmax` and `chunked`: the `implementation` option.

- `"xla"`: this library's own code (every platform; the reference of the others).
- `"cudnn"`: `jax.nn.dot_product_attention(implementation="cudnn")`, a fused flash kernel on
  NVIDIA GPUs (float16 or bfloat16, head dim a multiple of 8 up to 128).
- `"pallas"`: JAX's own Pallas flash-attention kernel (`jax.experimental.pallas.ops.gpu`);
  off a GPU it runs in Pallas's interpret mode (exact, slow: how it is tested on CPU).
- `"cpu"`: this library's fused flash kernel for x86-64 CPUs (attention_zoo/cpu_kernel.py:
  C++ through XLA's FFI, compiled for the machine on first use; float32, causal or not,
  padding lengths, grouped heads, nothing else).
- `None`: the fastest that honours every argument of the call on the current platform:
  cudnn, then pallas, on a GPU; on a CPU, `chunked`'s cpu kernel (`softmax` keeps its xla
  code there, see `dispatching`); xla where none of them honours the call.
  `explain(...)` says which one runs and why.

An implementation asked for by name that cannot honour an argument raises, naming it; none
drops a mask, bias, window, length or any other argument. The xla code's own options
(chunked's chunk sizes) count as arguments: given, they make `None` choose xla, and another
implementation asked for by name refuses them.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect

import jax
import jax.numpy as jnp

from attention_zoo import cpu_kernel, validation

IMPLEMENTATIONS = ("xla", "cudnn", "pallas", "cpu")
# The call's arguments beyond query, key, value, scale and is_causal (not the options of
# the xla code, such as chunked's chunk sizes).
CALL_ARGUMENTS = frozenset({
    "bias", "mask", "segment_ids", "query_seq_lengths", "key_value_seq_lengths",
    "local_window_size", "logit_soft_cap", "sinks", "score_mod", "mask_mod", "return_residual"})
PALLAS_BLOCK = 64  # the Pallas kernel's block rows (lengths are padded to a multiple)


@dataclasses.dataclass(frozen=True)
class Dispatch:
  """How a variant's `implementation=None` chooses (set by `dispatching`)."""
  xla_options: tuple[str, ...]  # options only its xla code uses (None: not given)
  cpu_kernel_by_default: bool   # None picks the cpu kernel on a CPU where it honours the call


DISPATCHES: dict[str, Dispatch] = {}  # variant name -> its Dispatch


def check(variant: str, implementation) -> None:
  if implementation is not None and implementation not in IMPLEMENTATIONS:
    raise ValueError(f"{variant}: implementation must be None or one of {IMPLEMENTATIONS}, "
                     f"got {implementation!r}")


def cannot_run_here(implementation: str) -> str | None:
  """Why `implementation` cannot run on this platform and machine at all, whatever the call
  (None if it can)."""
  platform = jax.default_backend()
  if implementation == "cudnn" and platform != "gpu":
    return f"platform {platform!r} (cudnn needs an NVIDIA GPU)"
  if implementation == "cpu":
    if platform != "cpu":
      return f"platform {platform!r} (the cpu kernel runs on the CPU)"
    why = cpu_kernel.unavailable() or cpu_kernel.build_failure()
    if why:
      return f"this machine ({why})"
  return None


def refusals(variant: str, implementation: str, dims, dtype, call: dict) -> list[str]:
  """The arguments of this call (given, not None) that `implementation` cannot honour, each
  with why; [] if it honours them all. `call` may hold the xla code's options too."""
  given = {a for a, x in call.items() if x is not None and x is not False}
  if implementation == "xla":
    return []
  out = [f"{a}={call[a]!r} (an option of the xla code; {implementation} chooses its own "
         f"blocks)" for a in DISPATCHES[variant].xla_options if a in given]
  here = cannot_run_here(implementation)
  if here:
    out.append(here)
  if implementation == "cudnn":
    out += [f"{a} (not an argument of jax.nn.dot_product_attention)" for a in sorted(given & {
        "segment_ids", "logit_soft_cap", "sinks", "score_mod", "mask_mod"})]
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16)):
      out.append(f"dtype {jnp.dtype(dtype).name} (cudnn takes float16 or bfloat16)")
    if dims.H % 8 or dims.H > 128:
      out.append(f"head dim {dims.H} (cudnn takes multiples of 8 up to 128)")
  if implementation == "pallas":
    out += [f"{a} (the Pallas kernel takes causal and segment ids only)"
            for a in sorted(given & CALL_ARGUMENTS - {"segment_ids"})]
    if call.get("segment_ids") is not None and dims.T != dims.S:
      out.append(f"segment_ids with T={dims.T} != S={dims.S} (one id array for both)")
    if dims.T != dims.S and (dims.T % PALLAS_BLOCK or dims.S % PALLAS_BLOCK
                             or dims.S % (dims.T // PALLAS_BLOCK)):
      out.append(f"T={dims.T}, S={dims.S}: unequal lengths must be multiples of "
                 f"{PALLAS_BLOCK} and S split into as many blocks as T (its fused backward)")
  if implementation == "cpu":
    out += [f"{a} (the cpu kernel takes causal masking, padding lengths and grouped heads "
            f"only)" for a in sorted(given & CALL_ARGUMENTS - {"query_seq_lengths",
                                                                "key_value_seq_lengths"})]
    if jnp.dtype(dtype) != jnp.dtype(jnp.float32):
      out.append(f"dtype {jnp.dtype(dtype).name} (the cpu kernel takes float32)")
  return out


def choose(variant: str, implementation, dims, dtype, call: dict) -> tuple[str, str]:
  """(the implementation that runs, why). A named one that cannot honour the call raises
  NotImplementedError naming the arguments."""
  check(variant, implementation)
  if implementation is not None:
    refused = refusals(variant, implementation, dims, dtype, call)
    if refused:
      raise NotImplementedError(f"{variant} attention with implementation={implementation!r} "
                                f"does not support: {'; '.join(refused)}")
    return implementation, "asked for by name"
  platform = jax.default_backend()
  if platform == "gpu":
    candidates = ("cudnn", "pallas")
  elif platform == "cpu" and DISPATCHES[variant].cpu_kernel_by_default:
    candidates = ("cpu",)
  else:
    named = "; the cpu kernel runs when asked for by name" if platform == "cpu" else ""
    return "xla", f"platform {platform!r}: {variant}'s default here is its xla code{named}"
  skipped = []
  for candidate in candidates:
    here = cannot_run_here(candidate)
    if here:
      skipped.append(f"{candidate} cannot run here: {here}")
      continue
    refused = refusals(variant, candidate, dims, dtype, call)
    if not refused:
      return candidate, (f"the fastest on this {platform.upper()} that honours the call"
                         if not skipped else "; ".join(skipped))
    skipped.append(f"{candidate} cannot take {', '.join(r.split(' (')[0] for r in refused)}")
  return "xla", "; ".join(skipped)


def dispatching(variant: str, check_options=None, *, cpu_kernel_by_default: bool):
  """Decorator of a variant function with an `implementation` parameter: runs the call on
  the implementation `choose` picks; the function itself is the xla one. `check_options`,
  the variant's own check of its options, runs first, whichever implementation then runs;
  its parameters other than `implementation` are options only the xla code uses (chunked's
  chunk sizes; the kernels choose their own blocks), None when not given: given, they make
  None choose xla and a kernel asked for by name refuses them, so none is ever ignored.
  `cpu_kernel_by_default`: whether None picks the cpu kernel on a CPU."""
  checked = tuple(inspect.signature(check_options).parameters) if check_options else ()
  DISPATCHES[variant] = Dispatch(tuple(o for o in checked if o != "implementation"),
                                 cpu_kernel_by_default)

  def decorate(fn):
    @functools.wraps(fn)
    def wrapper(query, key, value, bias=None, mask=None, *, scale=None, is_causal=False,
                implementation=None, **call):
      if check_options is not None:
        check_options(**{name: call[name] for name in checked if name in call})
      dims = validation.check_inputs(variant, query, key, value, bias, mask)
      chosen, _ = choose(variant, implementation, dims, query.dtype,
                         dict(call, bias=bias, mask=mask))
      if chosen == "xla":
        return fn(query, key, value, bias, mask, scale=scale, is_causal=is_causal, **call)
      out = run(chosen, query, key, value, bias, mask,
                scale=validation.default_scale(variant, scale, dims.H), is_causal=is_causal,
                **call)
      if call.get("return_residual"):
        return out[0].astype(query.dtype), out[1].astype(key.dtype)
      return out.astype(query.dtype)
    return wrapper
  return decorate


def run(implementation: str, query, key, value, bias, mask, *, scale, is_causal, segment_ids,
        **call):
  """The call on the chosen non-xla implementation (`choose` has checked it honours it)."""
  if implementation == "cpu":
    return cpu_kernel.flash(query, key, value, scale, is_causal,
                            query_seq_lengths=call.get("query_seq_lengths"),
                            key_value_seq_lengths=call.get("key_value_seq_lengths"))
  if implementation == "cudnn":
    return jax.nn.dot_product_attention(
        query, key, value, bias, mask, scale=scale, is_causal=is_causal, implementation="cudnn",
        query_seq_lengths=call.get("query_seq_lengths"),
        key_value_seq_lengths=call.get("key_value_seq_lengths"),
        local_window_size=call.get("local_window_size"),
        return_residual=bool(call.get("return_residual")))
  return _pallas(query, key, value, scale=scale, is_causal=is_causal,
                 segment_ids=None if segment_ids is None else segment_ids[0])


def _pallas(query, key, value, *, scale, is_causal, segment_ids):
  """Pallas's flash attention. Its kernel needs as many key/value heads as query heads (the
  groups are repeated) and lengths that are multiples of its blocks: equal lengths are
  padded, the padding put in a segment of its own that no real query attends."""
  from jax.experimental.pallas.ops.gpu import attention as pallas_attention  # GPU-only import
  B, T, N, H = query.shape
  S = key.shape[1]
  key, value = (jnp.repeat(x, N // key.shape[2], axis=2) for x in (key, value))
  pad = -T % PALLAS_BLOCK if T == S else 0
  if pad:
    ids = jnp.zeros((B, T), jnp.int32) if segment_ids is None else segment_ids
    segment_ids = jnp.pad(ids, ((0, 0), (0, pad)), constant_values=jnp.min(ids) - 1)
    query, key, value = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
                         for x in (query, key, value))
  block_q = min(PALLAS_BLOCK, T + pad)
  block_k = min(PALLAS_BLOCK, S + pad)
  block_k_back = (S + pad) // ((T + pad) // block_q)  # as many key blocks as query blocks
  blocks = pallas_attention.BlockSizes(block_q, block_k, block_q, block_k_back, block_q,
                                       block_k_back)
  out = pallas_attention.mha(query, key, value, segment_ids, sm_scale=scale, causal=is_causal,
                             block_sizes=blocks, interpret=jax.default_backend() != "gpu")
  return out[:, :T]
