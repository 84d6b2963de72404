"""Name -> attention variant. Adding a variant: one module, one entry in VARIANTS."""

from __future__ import annotations

import functools
import inspect
from typing import Callable, NamedTuple

import jax

from attention_zoo import chunked, linear, local, ring, softmax, validation

class Variant(NamedTuple):
  fn: Callable                                  # the attention function
  check_options: Callable = lambda **_: None    # validates option values at lookup


VARIANTS: dict[str, Variant] = {
    softmax.NAME: Variant(softmax.softmax_attention),
    chunked.NAME: Variant(chunked.chunked_attention, chunked.check_options),
    local.NAME: Variant(local.local_attention, local.check_options),
    linear.NAME: Variant(linear.linear_attention, linear.check_options),
    ring.NAME: Variant(ring.ring_attention, ring.check_options),
}

# Keyword arguments of jax.nn.dot_product_attention that any variant may take.
CALL_ARGUMENTS = ("scale", "is_causal", "query_seq_lengths", "key_value_seq_lengths",
                  "local_window_size")
# Arguments that decide shapes or control flow, so they are compile-time constants.
STATIC_ARGUMENTS = ("scale", "is_causal", "local_window_size")
_UNSET = object()


def names() -> list[str]:
  """The registered variant names."""
  return sorted(VARIANTS)


def options(name: str) -> dict[str, object]:
  """A variant's own options and their defaults (beyond the shared call arguments)."""
  params = inspect.signature(_lookup(name).fn).parameters.values()
  return {p.name: p.default for p in params
          if p.kind is p.KEYWORD_ONLY and p.name not in CALL_ARGUMENTS}


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
  if bound.get("local_window_size") is not None:
    bound["local_window_size"] = validation.normalize_window(name, bound["local_window_size"])
  return Attention(name, variant.fn, bound)


def _lookup(name: str) -> Variant:
  if name not in VARIANTS:
    raise ValueError(f"unknown attention variant {name!r}; registered: {names()}")
  return VARIANTS[name]


class Attention:
  """A variant with bound options, called like `jax.nn.dot_product_attention`.

  Call-time arguments override bound ones. Compiled once per input shape/dtype and
  static arguments (`jitted` is the underlying `jax.jit` function).
  """

  def __init__(self, name: str, fn: Callable, bound: dict):
    self.name, self.bound = name, dict(bound)
    self.jitted = jax.jit(functools.partial(fn, **bound), static_argnames=STATIC_ARGUMENTS)
    functools.update_wrapper(self, fn)

  def __call__(self, query, key, value, bias=None, mask=None, *, scale=_UNSET,
               is_causal=_UNSET, query_seq_lengths=None, key_value_seq_lengths=None,
               local_window_size=_UNSET):
    given = dict(scale=scale, is_causal=is_causal, local_window_size=local_window_size)
    static = {k: v for k, v in given.items() if v is not _UNSET}
    if static.get("local_window_size") is not None:
      static["local_window_size"] = validation.normalize_window(
          self.name, static["local_window_size"])
    if "is_causal" in static:
      static["is_causal"] = bool(static["is_causal"])
    return self.jitted(query, key, value, bias, mask, query_seq_lengths=query_seq_lengths,
                       key_value_seq_lengths=key_value_seq_lengths, **static)

  def __repr__(self) -> str:
    bound = ", ".join(f"{k}={v!r}" for k, v in self.bound.items())
    return f"attention_zoo.get({self.name!r}{', ' if bound else ''}{bound})"
