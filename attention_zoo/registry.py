"""Name -> attention variant and what it can do.

Adding a variant: one module and one entry in VARIANTS, or, from another package,
`register(name, Variant(...))` (docs/add_a_variant.md). Everything the rest of the code
needs to know about a variant (its decoder, its per-token inputs and the layer-side
projections that make them, whether it is causal only, which call arguments it refuses,
whether it splits sequences over a mesh axis) is on its entry, so nothing else keeps a
list of names.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Callable, Mapping, NamedTuple

import jax

from attention_zoo import (chunked, chunkwise, decoding, deltanet, gated_deltanet, gla,
                           implementations, linear, local, retention, ring, softmax, validation)


class Input(NamedTuple):
  """A per-token array a variant takes besides q, k and v: traced, unlike options."""
  per_head_dim: bool  # shape [B, T, N, H] if True, else [B, T, N] (one value per query head)
  projection: str     # how the layer computes it: a name in attention_zoo.gates.PROJECTIONS
  bounds: tuple[float, float]  # the open or closed range of its values, e.g. (0, 1) for beta

  def shape(self, query_shape) -> tuple[int, ...]:
    """Its shape for a query of shape [B, T, N, H]."""
    return tuple(query_shape) if self.per_head_dim else tuple(query_shape[:3])


@dataclasses.dataclass(frozen=True)
class Variant:
  fn: Callable                                  # the attention function
  check_options: Callable = lambda **_: None    # validates option values at lookup
  decoder: decoding.Decoder | None = None       # incremental decoding; None: it has none
  inputs: Mapping[str, Input] = dataclasses.field(default_factory=dict)
  causal_only: bool = False                     # is_causal=True and T == S, or it raises
  refuses: tuple[str, ...] = ()                 # call arguments it raises on, never ignores
  segments: str = "pairs"                       # segment_ids it takes: "pairs", any query and
                                                # key ids; "runs", one [B, T] array in causal
                                                # calls (its state restarts where ids change)
  mesh_axis_option: str | None = None           # its option naming the mesh axis it splits
  normalize_qk: bool = False                    # the layer L2-normalises q and k (delta rule)
  output_norm: bool = False                     # the layer RMS-normalises each head's output
  equals: str | None = None                     # a registered variant it computes exactly
                                                # (at its default options): its oracle

  @property
  def decodes(self) -> bool:
    return self.decoder is not None

  @property
  def splits_sequences(self) -> bool:
    return self.mesh_axis_option is not None


# What a causal-only recurrence refuses (besides is_causal=False); the recurrences take
# segment_ids (their state restarts where the id changes; linear's in its causal form).
_RECURRENCE_REFUSES = ("bias", "mask", "local_window_size", "logit_soft_cap", "sinks",
                       "score_mod", "mask_mod", "return_residual")
# Gated DeltaNet's and Mamba-2's per-head decay; the delta rule's writing strength.
_LOG_GATE = Input(per_head_dim=False, projection="softplus_decay", bounds=(-float("inf"), 0.0))
_BETA = Input(per_head_dim=False, projection="sigmoid", bounds=(0.0, 1.0))


def _recurrence(module, normalize_qk=False, **inputs) -> Variant:
  """The entry of a gated or delta-rule recurrence module (retention.py, gla.py, ...)."""
  return Variant(getattr(module, f"{module.NAME}_attention"), module.check_options,
                 decoder=decoding.recurrent(module), inputs=inputs, causal_only=True,
                 refuses=_RECURRENCE_REFUSES, segments="runs", normalize_qk=normalize_qk,
                 output_norm=True)


VARIANTS: dict[str, Variant] = {
    softmax.NAME: Variant(softmax.softmax_attention, softmax.check_options,
                          decoder=decoding.KV_CACHE),
    chunked.NAME: Variant(chunked.chunked_attention, chunked.check_options,
                          decoder=decoding.KV_CACHE),
    local.NAME: Variant(local.local_attention, local.check_options,
                        decoder=decoding.WINDOW_CACHE),
    linear.NAME: Variant(linear.linear_attention, linear.check_options,
                         decoder=decoding.recurrent(linear), refuses=_RECURRENCE_REFUSES,
                         segments="runs"),
    ring.NAME: Variant(ring.ring_attention, ring.check_options,
                       decoder=decoding.SOFTMAX_KV_CACHE,
                       refuses=("bias", "mask", "score_mod", "mask_mod"),
                       mesh_axis_option="axis_name"),
    # The gated and delta-rule recurrences: causal only, an output norm per head in the
    # layer (as their papers), gates and beta made by the layer from its input.
    retention.NAME: _recurrence(retention),
    gla.NAME: _recurrence(gla, log_gate=_LOG_GATE._replace(per_head_dim=True,
                                                            projection="low_rank_logsigmoid")),
    deltanet.NAME: _recurrence(deltanet, normalize_qk=True, beta=_BETA),
    gated_deltanet.NAME: _recurrence(gated_deltanet, normalize_qk=True, log_gate=_LOG_GATE,
                                     beta=_BETA),
}

# Keyword arguments of jax.nn.dot_product_attention that any variant may take.
CALL_ARGUMENTS = ("scale", "is_causal", "query_seq_lengths", "key_value_seq_lengths",
                  "local_window_size")
# Call arguments beyond JAX's: a variant takes them (a parameter of its function) or, through
# validation.call_forms, refuses them; its entry's `refuses` says which.
EXTRA_CALL_ARGUMENTS = ("segment_ids", "logit_soft_cap", "sinks", "score_mod", "mask_mod",
                        "return_residual")
# Arguments that decide shapes or control flow, so they are compile-time constants.
# score_mod and mask_mod are functions, hashed by identity: define them once, not per call.
STATIC_ARGUMENTS = ("scale", "is_causal", "local_window_size", "logit_soft_cap", "score_mod",
                    "mask_mod", "return_residual")
_UNSET = object()


def register(name: str, variant: Variant) -> None:
  """Adds `variant` under `name`, so that `get`, the models, the configs and the shared
  tests (contract, properties, decoding, training) take it by name. Raises if the name is
  taken or if its function lacks an argument of `jax.nn.dot_product_attention`."""
  if not isinstance(variant, Variant):
    raise TypeError(f"register({name!r}, ...): expected a registry.Variant, got {variant!r}")
  if name in VARIANTS:
    raise ValueError(f"attention variant {name!r} is already registered")
  params = inspect.signature(variant.fn).parameters
  missing = [a for a in ("query", "key", "value", "bias", "mask", *CALL_ARGUMENTS)
             if a not in params]
  if missing:
    raise ValueError(f"register({name!r}, ...): {variant.fn.__name__} lacks argument(s) "
                     f"{missing} of jax.nn.dot_product_attention's signature")
  for argument in EXTRA_CALL_ARGUMENTS:  # taken (a parameter) or refused, and said so
    if (argument in params) == (argument in variant.refuses):
      raise ValueError(f"register({name!r}, ...): {variant.fn.__name__} "
                       f"{'takes' if argument in params else 'lacks'} {argument} but the "
                       f"entry's refuses={variant.refuses!r} says otherwise")
  if variant.equals is not None:
    _lookup(variant.equals)
  VARIANTS[name] = variant


def explain(name: str, query, key, value, bias=None, mask=None, **arguments) -> str:
  """Which implementation of `name` runs this call here, and why (options and call
  arguments together in `arguments`, as `get(name, **options)(q, k, v, **call)` takes)."""
  own = options(name)
  if "chunk_form" in own:  # the recurrences: which chunkwise form (chunkwise.py)
    validation.check_inputs(name, query, key, value, bias, mask)
    form, why = chunkwise.choose_form(arguments.get("chunk_form"))
    return f"{name}: chunk_form {form!r} ({why})"
  if "implementation" not in own:
    return f"{name}: its own code (it has one implementation)"
  _lookup(name).check_options(**{a: x for a, x in arguments.items() if a in own})  # as a call
  call = {a: x for a, x in arguments.items()
          if a not in ("implementation", "scale", "is_causal")}  # the xla code's options too
  dims = validation.check_inputs(name, query, key, value, bias, mask)
  impl, why = implementations.choose(name, arguments.get("implementation"), dims, query.dtype,
                                     dict(call, bias=bias, mask=mask))
  return f"{name}: {impl} ({why})"


def names(**capabilities) -> list[str]:
  """The registered variant names; with `capabilities`, those whose entry has them, e.g.
  `names(causal_only=False)` or `names(decodes=True)`."""
  return sorted(name for name, variant in VARIANTS.items()
                if all(getattr(variant, field) == value for field, value in capabilities.items()))


def entry(name: str) -> Variant:
  """The registry entry of `name`: its function and what it can do."""
  return _lookup(name)


def options(name: str) -> dict[str, object]:
  """A variant's own options and their defaults (beyond the call arguments and inputs)."""
  variant = _lookup(name)
  params = inspect.signature(variant.fn).parameters.values()
  return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY
          and p.name not in CALL_ARGUMENTS + EXTRA_CALL_ARGUMENTS
          and p.name not in variant.inputs}


def frozen(options: dict) -> tuple:
  """Options as a sorted tuple of (name, value) pairs, lists made tuples: hashable."""
  return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items()))


def get(name: str, **bound) -> "Attention":
  """The variant `name` as a jitted function with `bound` options fixed, like a partial.

  `bound` may hold the variant's options (see `options(name)`) and the static call
  arguments `scale`, `is_causal`, `local_window_size`. The same name and options give the
  same function, so looking one up inside a loop or a traced step never recompiles.
  """
  return _get(name, frozen(bound))


@functools.lru_cache(maxsize=None)
def _get(name: str, bound: tuple) -> "Attention":
  bound = dict(bound)
  variant = _lookup(name)
  own = options(name)
  allowed = list(own) + list(STATIC_ARGUMENTS)
  unknown = sorted(set(bound) - set(allowed))
  if unknown:
    raise ValueError(f"unknown option(s) {unknown} for attention variant {name!r}; "
                     f"it takes {allowed}")
  variant.check_options(**{k: v for k, v in bound.items() if k in own})
  validation.check_scale(name, bound.get("scale"))
  validation.check_soft_cap(name, bound.get("logit_soft_cap"))
  validation.unsupported(name, **{a: x for a, x in bound.items() if a in variant.refuses})
  if bound.get("local_window_size") is not None:
    bound["local_window_size"] = validation.normalize_window(name, bound["local_window_size"])
  return Attention(name, variant, bound)


def _lookup(name: str) -> Variant:
  if name not in VARIANTS:
    raise ValueError(f"unknown attention variant {name!r}; registered: {names()}")
  return VARIANTS[name]


class Attention:
  """A variant with bound options, called like `jax.nn.dot_product_attention`.

  Call-time arguments override bound ones. Compiled once per input shape/dtype and
  static arguments (`jitted` is the underlying `jax.jit` function).
  """

  def __init__(self, name: str, variant: Variant, bound: dict):
    self.name, self.bound, self.inputs = name, dict(bound), tuple(variant.inputs)
    params = inspect.signature(variant.fn).parameters
    self.static = tuple(a for a in STATIC_ARGUMENTS if a in params)  # the rest it refuses
    self.jitted = jax.jit(functools.partial(variant.fn, **bound), static_argnames=self.static)
    functools.update_wrapper(self, variant.fn)

  def __call__(self, query, key, value, bias=None, mask=None, *, scale=_UNSET,
               is_causal=_UNSET, query_seq_lengths=None, key_value_seq_lengths=None,
               local_window_size=_UNSET, segment_ids=None, logit_soft_cap=_UNSET, sinks=None,
               score_mod=_UNSET, mask_mod=_UNSET, return_residual=_UNSET, **inputs):
    """`inputs`: the variant's per-token arrays (e.g. `log_gate`), see `entry(name).inputs`.
    Beyond JAX's arguments, for the variants that take them (the others raise):
    `segment_ids` (int [B, T] or a (query, key) pair: packed sequences), `logit_soft_cap`
    (cap·tanh(logits/cap) before masking, Gemma 2) and `sinks` (float [N]: a learned logit
    per query head that joins the softmax's normaliser and adds no value), `score_mod` and
    `mask_mod` (FlexAttention's functions; attention_zoo/mods.py), `return_residual`
    (True: (output, log-sum-exp [B, T, N]) as `jax.nn.dot_product_attention`)."""
    unknown = sorted(set(inputs) - set(self.inputs))
    if unknown:
      raise ValueError(f"{self.name}: unexpected argument(s) {unknown}; its per-token inputs "
                       f"are {list(self.inputs)}")
    given = dict(scale=scale, is_causal=is_causal, local_window_size=local_window_size,
                 logit_soft_cap=logit_soft_cap, score_mod=score_mod, mask_mod=mask_mod,
                 return_residual=return_residual)
    static = {k: v for k, v in given.items() if v is not _UNSET}
    if static.get("local_window_size") is not None:
      static["local_window_size"] = validation.normalize_window(
          self.name, static["local_window_size"])
    if "is_causal" in static:
      static["is_causal"] = bool(static["is_causal"])
    refused = {a: static.pop(a) for a in list(static) if a not in self.static}
    validation.unsupported(self.name, **refused)
    return self.jitted(query, key, value, bias, mask, query_seq_lengths=query_seq_lengths,
                       key_value_seq_lengths=key_value_seq_lengths,
                       **{a: x for a, x in (("segment_ids", segment_ids), ("sinks", sinks))
                          if x is not None},
                       **static, **inputs)

  def __repr__(self) -> str:
    bound = ", ".join(f"{k}={v!r}" for k, v in self.bound.items())
    return f"attention_zoo.get({self.name!r}{', ' if bound else ''}{bound})"
