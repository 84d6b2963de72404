"""The contract every registered variant keeps (parameterized over attention_zoo.names())."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_zoo
from attention_zoo import mods, registry
from tests import oracle

# Options a variant cannot run without; a new variant needs an entry only if it has some.
REQUIRED_OPTIONS = {"local": dict(local_window_size=(4, 4))}
B, T, S, N, K, H = 2, 13, 13, 4, 2, 8


def _get(name, **options):
  return attention_zoo.get(name, **{**REQUIRED_OPTIONS.get(name, {}), **options})


def _arrays(dtype=jnp.float32, seed=0, t=T, s=S):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=(B, t, N, H)), dtype),
          jnp.asarray(rng.normal(size=(B, s, K, H)), dtype),
          jnp.asarray(rng.normal(size=(B, s, K, H)), dtype))


def _inputs(name, query_shape, seed=0):
  return oracle.per_token_inputs(name, query_shape, seed)


def _call(name, attend, q, k, v, **kwargs):
  """attend(q, k, v, **kwargs) with the variant's per-token inputs, on its domain's keys."""
  return attend(q, oracle.unit_keys(name, k), v, **kwargs, **_inputs(name, q.shape))


NAMES = attention_zoo.names()
CAUSAL_ONLY = registry.names(causal_only=True)


def test_the_four_variants_are_registered():
  assert set(NAMES) >= {"softmax", "chunked", "local", "linear"}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_shape_and_dtype(name, dtype):
  causal_only = name in CAUSAL_ONLY  # those need T == S and is_causal
  q, k, v = _arrays(dtype, t=7 if not causal_only else 11, s=11)
  out = _call(name, _get(name), q, k, v, **(dict(is_causal=True) if causal_only else {}))
  assert out.shape == q.shape and out.dtype == dtype
  assert bool(jnp.isfinite(out).all())


@pytest.mark.parametrize("name", NAMES)
def test_finite_on_large_logits_and_on_rows_with_no_key(name):
  q, k, v = _arrays()
  out = _call(name, _get(name), q * 1e3, k * 1e3, v,
              query_seq_lengths=jnp.array([T, 5], jnp.int32),
              key_value_seq_lengths=jnp.array([0, S], jnp.int32), is_causal=True)
  assert bool(jnp.isfinite(out).all())
  np.testing.assert_array_equal(out[0], 0.0)      # batch 0 may attend no key at all
  np.testing.assert_array_equal(out[1, 5:], 0.0)  # padded query rows
  grads = jax.grad(lambda q, k, v: _call(name, _get(name), q, k, v, is_causal=True).sum(),
                   (0, 1, 2))(q * 1e3, k * 1e3, v)
  assert all(bool(jnp.isfinite(g).all()) for g in grads)


@pytest.mark.parametrize("name", NAMES)
def test_causality_by_gradients(name):
  """Output t has exactly zero gradient w.r.t. keys and values after t, some before."""
  q, k, v = _arrays()
  attend = _get(name)
  for t in (0, 6, T - 1):
    dk, dv = jax.grad(lambda k, v: _call(name, attend, q, k, v, is_causal=True)[:, t].sum(),
                      (0, 1))(k, v)
    for g in (dk, dv):
      np.testing.assert_array_equal(g[:, t + 1:], 0.0)
    assert float(jnp.abs(dv[:, :t + 1]).max()) > 0


@pytest.mark.parametrize("name", NAMES)
def test_jit_and_no_jit_agree_without_retracing(name):
  """One compilation for a new shape, none for repeated calls (lookups are shared, so the
  cache is measured by its growth)."""
  attend = _get(name)
  raw = registry.VARIANTS[name].fn
  before = attend.jitted._cache_size()
  for seed in range(3):
    q, k, v = _arrays(seed=seed, t=T + 4, s=S + 4)  # a shape no other test uses
    np.testing.assert_allclose(_call(name, attend, q, k, v, is_causal=True),
                               _call(name, raw, q, k, v, is_causal=True, **attend.bound),
                               atol=1e-6)
  assert attend.jitted._cache_size() == before + 1


@pytest.mark.parametrize("name", NAMES)
def test_options_bind_like_partial(name):
  """is_causal bound at lookup equals passing it at call time; the call overrides it."""
  q, k, v = _arrays()
  bound = _get(name, is_causal=True)
  np.testing.assert_array_equal(_call(name, bound, q, k, v),
                                _call(name, _get(name), q, k, v, is_causal=True))
  if name in CAUSAL_ONLY:
    with pytest.raises(NotImplementedError, match=f"^{name}.*is_causal"):
      _call(name, bound, q, k, v, is_causal=False)
  else:
    np.testing.assert_array_equal(_call(name, bound, q, k, v, is_causal=False),
                                  _call(name, _get(name), q, k, v))


def _bad_inputs():
  q, k, v = _arrays()
  return {
      "rank": ((q[0, 0], k, v), {}, r"query must have rank 4 .* got shape \(4, 8\)"),
      "head dim": ((q, k[..., :4], v[..., :4]), {}, r"agree on B and H"),
      "key/value shapes": ((q, k, v[:, :5]), {}, r"key and value shapes differ"),
      "heads": ((q[:, :, :3], k, v), {}, r"N=3 must be a multiple of key/value heads K=2"),
      "integer dtype": ((q.astype(jnp.int32), k, v), {}, r"query must be float16, bfloat16 or"),
      "mixed dtypes": ((q, k.astype(jnp.bfloat16), v), {}, r"must share a dtype"),
      "lengths": ((q, k, v), dict(key_value_seq_lengths=jnp.ones((3,), jnp.int32)),
                  r"key_value_seq_lengths must be an int array of shape \[B\] = \(2,\)"),
      "float lengths": ((q, k, v), dict(query_seq_lengths=jnp.ones((2,))),
                        r"query_seq_lengths must be an int array"),
  }


@pytest.mark.parametrize("case", list(_bad_inputs()))
@pytest.mark.parametrize("name", NAMES)
def test_bad_input_raises_value_error(name, case):
  args, kwargs, message = _bad_inputs()[case]
  causal = dict(is_causal=True) if name in CAUSAL_ONLY else {}
  with pytest.raises(ValueError, match=f"^{name}: .*{message}"):
    _get(name)(*args, **kwargs, **causal, **_inputs(name, (B, T, N, H)))


@pytest.mark.parametrize("name", NAMES)
def test_bad_mask_bias_and_window_raise(name):
  """Exact variants reject malformed masks, biases and windows; linear rejects them all."""
  q, k, v = _arrays()
  cases = [dict(mask=jnp.ones((B, N, T, S + 1), bool)), dict(mask=jnp.ones((1, 1, T, S))),
           dict(bias=jnp.ones((B, 3, T, S))), dict(local_window_size=(-1, 2))]
  for kwargs in cases:
    with pytest.raises((ValueError, NotImplementedError), match=f"^{name}"):
      _get(name)(q, k, v, **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_non_positive_sizes_raise(name):
  q, k, v = _arrays()
  sizes = [o for o, default in attention_zoo.options(name).items()
           if isinstance(default, int) and o != "seed"]
  for option in sizes:
    with pytest.raises(ValueError, match=f"{option} must be a positive int"):
      _get(name, **{option: 0})  # at lookup
    with pytest.raises(ValueError, match=f"{option} must be a positive int"):
      _call(name, registry.VARIANTS[name].fn, q, k, v, is_causal=True, **{
          **REQUIRED_OPTIONS.get(name, {}), option: 0})  # and when called directly


@pytest.mark.parametrize("name", NAMES)
def test_refused_arguments_raise_naming_them(name):
  """What the registry entry says a variant refuses, it refuses (never ignores)."""
  q, k, v = _arrays()
  entry = registry.entry(name)
  values = dict(bias=jnp.zeros((1, 1, T, S)), mask=jnp.ones((1, 1, T, S), bool),
                local_window_size=(2, 2), segment_ids=jnp.zeros((B, T), jnp.int32),
                logit_soft_cap=30.0, sinks=jnp.zeros((N,)), score_mod=mods.soft_cap(30.0),
                mask_mod=mods.causal, return_residual=True)
  refused = [dict(is_causal=False)] if entry.causal_only else []
  refused += [{argument: values[argument], "is_causal": True} for argument in entry.refuses]
  for kwargs in refused:
    argument = next(iter(kwargs))
    with pytest.raises(NotImplementedError, match=f"^{name}.*{argument}"):
      _call(name, _get(name), q, k, v, **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_entries_refuse_exactly_the_extra_arguments_their_function_lacks(name):
  entry = registry.entry(name)
  params = inspect.signature(entry.fn).parameters
  for argument in registry.EXTRA_CALL_ARGUMENTS:
    assert (argument in params) != (argument in entry.refuses), (name, argument)


@pytest.mark.parametrize("name", NAMES)
def test_per_token_inputs_are_checked(name):
  """Inputs the entry does not declare raise; each declared one is required, with its shape."""
  q, k, v = _arrays()
  causal = dict(is_causal=True) if name in CAUSAL_ONLY else {}
  with pytest.raises(ValueError, match=f"^{name}: unexpected argument.*'gate'"):
    _get(name)(q, k, v, gate=jnp.zeros((B, T, N)), **causal)
  inputs = _inputs(name, q.shape)
  for missing in inputs:
    given = {n: x for n, x in inputs.items() if n != missing}
    with pytest.raises(ValueError, match=f"^{name}.*{missing}"):
      _get(name)(q, k, v, **given, **causal)
    with pytest.raises(ValueError, match=f"^{name}.*{missing}"):
      _get(name)(q, k, v, **{**inputs, missing: inputs[missing][:, :-1]}, **causal)


def test_lookups_are_shared():
  """The same name and options give the same compiled function (decoding loops rely on it)."""
  assert attention_zoo.get("chunked", query_chunk_size=8) is attention_zoo.get(
      "chunked", query_chunk_size=8)
  assert attention_zoo.get("chunked") is not attention_zoo.get("chunked", query_chunk_size=8)


def test_unknown_names_and_options_list_what_exists():
  with pytest.raises(ValueError,
                     match=r"registered: \['chunked', 'deltanet', 'gated_deltanet', 'gla', "
                           r"'linear', 'local', 'retention', 'ring', 'softmax'\]"):
    attention_zoo.get("flash")
  with pytest.raises(ValueError, match=r"'query_chunk_size', 'key_chunk_size'"):
    attention_zoo.get("chunked", chunk_size=3)
