"""retention, gla, deltanet and gated_deltanet against token-by-token references written here.

The oracle is a float64 numpy loop over tokens; gradients are checked against jax.grad of a
float64 lax.scan written here (neither shares code with attention_zoo). Shapes are small and
T = 37 is no multiple of any chunk size.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_zoo
from attention_zoo import chunkwise, deltanet, gated_deltanet, gla, retention

B, T, N, H = 2, 37, 4, 8
MODULES = {"retention": retention, "gla": gla, "deltanet": deltanet,
           "gated_deltanet": gated_deltanet}
ATTEND = {name: getattr(m, f"{name}_attention") for name, m in MODULES.items()}
VARIANTS = list(MODULES) + ["gla_per_head"]  # gla_per_head: gla with log_gate [B, T, N]
# Small chunks: T = 37 spans several, the last one partial (gla: chunks halved down to 2).
SMALL = {"retention": dict(chunk_size=8), "gla": dict(chunk_size=8, sub_chunk_size=2),
         "deltanet": dict(chunk_size=8), "gated_deltanet": dict(chunk_size=8)}
Q_LEN, KV_LEN = np.array([37, 20]), np.array([30, 0])


def _base(variant):
  return "gla" if variant == "gla_per_head" else variant


def _inputs(variant, seed=0, K=2, gates="typical"):
  """q, k, v (float64 numpy) and the per-token inputs the variant takes."""
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(B, T, N, H))
  k, v = rng.normal(size=(2, B, T, K, H))
  if "deltanet" in variant:  # the delta rule is a contraction on unit keys
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
  gate_shape = (B, T, N, H) if variant == "gla" else (B, T, N)
  low, high = {"typical": (-2.0, -0.01), "long": (-1e-3, -1e-4), "short": (-20.5, -19.5)}[
      gates if gates != "mixed" else "typical"]
  log_gate = rng.uniform(low, high, gate_shape)
  beta = rng.uniform(0.05, 0.95, (B, T, N))
  if gates == "long":
    beta = rng.uniform(0.999, 0.9999, (B, T, N))
  if gates == "short":
    beta = rng.uniform(1e-4, 1e-3, (B, T, N))
  if gates == "mixed":  # both extremes next to each other, inside one chunk
    steep = rng.random(gate_shape) < 0.5
    log_gate = np.where(steep, rng.uniform(-20.5, -19.5, gate_shape), -1e-4)
    beta = np.where(rng.random((B, T, N)) < 0.5, 0.9995, 5e-4)
  extra = {}
  if variant in ("gla", "gla_per_head", "gated_deltanet"):
    extra["log_gate"] = log_gate
  if "deltanet" in variant:
    extra["beta"] = beta
  return q, k, v, extra


def oracle(variant, q, k, v, log_gate=None, beta=None, scale=None, q_len=None, kv_len=None,
           initial=None, decay=None):
  """float64, token by token: (out [B, T, N, H], final state [B, N, H, H])."""
  b_, t_, n_, h_ = q.shape
  k, v = (np.repeat(x, n_ // x.shape[2], axis=2) for x in (k, v))
  scale = h_ ** -0.5 if scale is None else scale
  if variant == "retention":
    gamma = 1 - 2.0 ** (-5 - np.arange(n_)) if decay is None else np.asarray(decay)
    log_gate = np.broadcast_to(np.log(gamma), (b_, t_, n_))
  s = np.zeros((b_, n_, h_, h_)) if initial is None else np.array(initial, np.float64)
  out = np.zeros(q.shape)
  for t in range(t_):
    for b in range(b_):
      if kv_len is not None and t >= kv_len[b]:
        pass  # no update and no decay
      else:
        for n in range(n_):
          if log_gate is not None:
            a = np.exp(log_gate[b, t, n])
            s[b, n] = (a[:, None] if np.ndim(a) else a) * s[b, n]
          kt, vt = k[b, t, n], v[b, t, n]
          if beta is None:
            s[b, n] += np.outer(kt, vt)
          else:
            s[b, n] += beta[b, t, n] * np.outer(kt, vt - kt @ s[b, n])
      if q_len is None or t < q_len[b]:
        out[b, t] = np.einsum("nk,nkv->nv", scale * q[b, t], s[b])
  return out, s


def scan64(variant, q, k, v, log_gate=None, beta=None):
  """The recurrence as a float64 jnp lax.scan (differentiable; call under enable_x64)."""
  n_ = q.shape[2]
  k, v = (jnp.repeat(x, n_ // x.shape[2], axis=2) for x in (k, v))
  if variant == "retention":
    log_gate = jnp.broadcast_to(jnp.log(1 - 2.0 ** (-5 - jnp.arange(n_))), q.shape[:3])

  def step(s, xs):
    q, k, v, g, beta = xs
    if g is not None:
      s = jnp.exp(g)[..., None] * s if g.ndim == 3 else jnp.exp(g)[..., None, None] * s
    if beta is None:
      s = s + k[..., :, None] * v[..., None, :]
    else:
      s = s + beta[..., None, None] * k[..., :, None] * (
          v - jnp.einsum("bnk,bnkv->bnv", k, s))[..., None, :]
    return s, jnp.einsum("bnk,bnkv->bnv", q * q.shape[-1] ** -0.5, s)

  xs = tuple(None if x is None else jnp.moveaxis(x, 1, 0) for x in (q, k, v, log_gate, beta))
  s0 = jnp.zeros(q.shape[:1] + (n_, q.shape[-1], q.shape[-1]), q.dtype)
  return jnp.moveaxis(jax.lax.scan(step, s0, xs)[1], 0, 1)


@functools.lru_cache(maxsize=None)
def _jitted(variant, frozen_options=()):
  return jax.jit(functools.partial(ATTEND[_base(variant)], is_causal=True,
                                   **dict(frozen_options)))


def _attend(variant, q, k, v, extra, dtype=jnp.float32, **options):
  cast = lambda x: jnp.asarray(x, dtype)
  lengths = {n: jnp.asarray(options.pop(n), jnp.int32)
             for n in ("query_seq_lengths", "key_value_seq_lengths") if n in options}
  return _jitted(variant, tuple(sorted(options.items())))(
      cast(q), cast(k), cast(v), **{n: jnp.asarray(x, jnp.float32) for n, x in extra.items()},
      **lengths)


def _close(got, want, rtol=2e-5):
  scale = np.abs(want).max()
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("K, chunks", [(1, "default"), (N, "one"), (2, "tokens"),
                                       (2, "halved_to_tokens")])
def test_forward_matches_oracle(variant, K, chunks):
  """Grouped heads (K = 1, 2, N) and chunk sizes: the default, one chunk for all (gla:
  exp(b_i - b_j) over the whole chunk), one per token, and chunks of 16 (gla: halved down
  to single tokens). The other tests use chunks of 8 (gla: halved down to 2)."""
  name = _base(variant)
  chunk, sub = {"default": (None, None), "one": (64, 64), "tokens": (1, 1),
                "halved_to_tokens": (16, 1)}[chunks]
  options = {} if chunk is None else dict(chunk_size=chunk)
  if name == "gla" and sub is not None:
    options["sub_chunk_size"] = sub
  q, k, v, extra = _inputs(variant, seed=1, K=K)
  _close(_attend(variant, q, k, v, extra, **options), oracle(name, q, k, v, **extra)[0])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("gates", ["long", "short", "mixed"])
def test_extreme_gates_and_beta(variant, gates):
  """Gates near 0 (long memories) and near -20 (short), beta near 1 and near 0, and both side
  by side in one chunk: no overflow, the oracle's result (gradients: the next test, mixed)."""
  q, k, v, extra = _inputs(variant, seed=2, gates=gates)
  _close(_attend(variant, q, k, v, extra, **SMALL[_base(variant)]),
         oracle(_base(variant), q, k, v, **extra)[0])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("gates", ["typical", "mixed"])
def test_gradients_match_float64_scan(variant, gates):
  """d/d(q, k, v, log_gate, beta) of sum(out * cotangent), chunkwise float32 vs float64."""
  q, k, v, extra = _inputs(variant, seed=3, gates=gates)
  cot = np.random.default_rng(4).normal(size=q.shape)
  args = (q, k, v, *extra.values())
  names = list(extra)
  got = jax.grad(lambda *a: jnp.sum(_attend(variant, *a[:3], dict(zip(names, a[3:])),
                                            **SMALL[_base(variant)]) * cot),
                 tuple(range(len(args))))(*(jnp.asarray(x, jnp.float32) for x in args))
  with jax.enable_x64(True):
    want = jax.grad(lambda *a: jnp.sum(scan64(_base(variant), *a[:3], **dict(zip(names, a[3:])))
                                       * cot), tuple(range(len(args))))(
        *(jnp.asarray(x, jnp.float64) for x in args))
    want = [np.asarray(w) for w in want]
  for g, w, name in zip(got, want, ["query", "key", "value"] + names):
    assert g.shape == w.shape, name
    np.testing.assert_allclose(np.asarray(g), w, rtol=0, atol=1e-4 * np.abs(w).max() + 1e-7,
                               err_msg=name)


@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_lengths(variant):
  """Queries past their length output zeros; keys past theirs neither update nor decay."""
  q, k, v, extra = _inputs(variant, seed=5)
  got = _attend(variant, q, k, v, extra, query_seq_lengths=Q_LEN, key_value_seq_lengths=KV_LEN,
                **SMALL[_base(variant)])
  _close(got, oracle(_base(variant), q, k, v, **extra, q_len=Q_LEN, kv_len=KV_LEN)[0])
  np.testing.assert_array_equal(got[0, Q_LEN[0]:], 0.0)
  np.testing.assert_array_equal(got[1], 0.0)  # no key at all


@pytest.mark.parametrize("variant, dtype", [(v, jnp.bfloat16) for v in VARIANTS] + [
    ("gla", jnp.float16), ("gated_deltanet", jnp.float16)])
def test_half_precision_is_one_rounding_of_float32(variant, dtype):
  q, k, v, extra = _inputs(variant, seed=6)
  q, k, v = (np.asarray(jnp.asarray(x, dtype), np.float64) for x in (q, k, v))
  got = _attend(variant, q, k, v, extra, dtype=dtype)
  want = np.asarray(_attend(variant, q, k, v, extra))
  assert got.dtype == dtype
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=jnp.finfo(dtype).eps,
                             atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("variant", VARIANTS)
def test_decoding_steps_equal_the_full_call_and_its_state(variant):
  """Step by step equals the chunkwise call, output and state; and the chunkwise form run
  from the state after 20 steps continues the sequence (prefill, then decode)."""
  name, module = _base(variant), MODULES[_base(variant)]
  q, k, v, extra = _inputs(variant, seed=7)
  q, k, v = (jnp.asarray(x, jnp.float32) for x in (q, k, v))
  extra = {n: jnp.asarray(x, jnp.float32) for n, x in extra.items()}
  run = jax.jit(functools.partial(module.chunkwise_with_state, **SMALL[name]))
  full, state = run(q, k, v, **extra)
  step = jax.jit(module.recurrent_step)
  cache, outs = module.init_state(B, N, k.shape[2], H), []
  for t in range(T):
    if t == 20:
      rest = lambda x: x[:, 20:]
      out, end = run(*map(rest, (q, k, v)), **jax.tree.map(rest, extra), initial_state=cache)
      np.testing.assert_allclose(out, full[:, 20:], atol=2e-5, rtol=1e-4)
      np.testing.assert_allclose(end["state"], state["state"], atol=2e-5, rtol=1e-4)
    out, cache = step(cache, q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1],
                      **{n: x[:, t:t + 1] for n, x in extra.items()})
    outs.append(out)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=2e-5, rtol=1e-4)
  np.testing.assert_allclose(cache["state"], state["state"], atol=2e-5, rtol=1e-4)
  _close(state["state"], oracle(name, *(np.asarray(x, np.float64) for x in (q, k, v)),
                                **{n: np.asarray(x, np.float64) for n, x in extra.items()})[1])


@pytest.mark.parametrize("variant", VARIANTS)
def test_scan_reference_matches_oracle(variant):
  q, k, v, extra = _inputs(variant, seed=9)
  module = MODULES[_base(variant)]
  out, state = jax.jit(module.recurrent_scan)(
      *(jnp.asarray(x, jnp.float32) for x in (q, k, v)),
      **{n: jnp.asarray(x, jnp.float32) for n, x in extra.items()},
      query_seq_lengths=jnp.asarray(Q_LEN), key_value_seq_lengths=jnp.asarray(KV_LEN))
  want, want_state = oracle(_base(variant), q, k, v, **extra, q_len=Q_LEN, kv_len=KV_LEN)
  _close(out, want)
  _close(state["state"], want_state)


@pytest.mark.parametrize("variant", VARIANTS)
def test_causality_by_exactly_zero_gradients(variant):
  q, k, v, extra = _inputs(variant, seed=10)
  args = tuple(jnp.asarray(x, jnp.float32) for x in (q, k, v, *extra.values()))
  names = list(extra)
  for t in (0, 9, T - 1):
    grads = jax.grad(lambda *a: jnp.sum(_attend(variant, *a[:3], dict(zip(names, a[3:])),
                                                **SMALL[_base(variant)])[:, t]),
                     tuple(range(len(args))))(*args)
    for g in grads:
      np.testing.assert_array_equal(g[:, t + 1:], 0.0)
    assert float(jnp.abs(grads[2][:, :t + 1]).max()) > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_parallel_form_matches_the_oracle(variant):
  """chunk_form="parallel" (every chunk at once, the states by an associative scan; the
  default off a CPU): grouped heads, both gate extremes in one chunk, lengths, the final
  state, a start from a given state, gradients and causality, each against its reference."""
  name, module = _base(variant), MODULES[_base(variant)]
  options = dict(SMALL[name], chunk_form="parallel")
  q, k, v, extra = _inputs(variant, seed=12, gates="mixed")
  _close(_attend(variant, q, k, v, extra, query_seq_lengths=Q_LEN, key_value_seq_lengths=KV_LEN,
                 **options), oracle(name, q, k, v, **extra, q_len=Q_LEN, kv_len=KV_LEN)[0])
  run = jax.jit(functools.partial(module.chunkwise_with_state, **options))
  f32 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
  head = lambda x: x[:, :20]
  tail = lambda x: x[:, 20:]
  _, middle = run(*f32((head(q), head(k), head(v))), **f32(jax.tree.map(head, extra)))
  out, end = run(*f32((tail(q), tail(k), tail(v))), **f32(jax.tree.map(tail, extra)),
                 initial_state=middle)
  want, want_state = oracle(name, q, k, v, **extra)
  _close(out, want[:, 20:])
  _close(end["state"], want_state)

  args = (q, k, v, *extra.values())
  names = list(extra)
  attend = lambda *a: _attend(variant, *a[:3], dict(zip(names, a[3:])), **options)
  cot = np.random.default_rng(13).normal(size=q.shape)
  got = jax.grad(lambda *a: jnp.sum(attend(*a) * cot), tuple(range(len(args))))(*f32(args))
  with jax.enable_x64(True):
    wanted = jax.grad(lambda *a: jnp.sum(scan64(name, *a[:3], **dict(zip(names, a[3:]))) * cot),
                      tuple(range(len(args))))(*(jnp.asarray(x, jnp.float64) for x in args))
  for g, w, arg in zip(got, wanted, ["query", "key", "value"] + names):
    w = np.asarray(w)
    np.testing.assert_allclose(np.asarray(g), w, rtol=0, atol=1e-4 * np.abs(w).max() + 1e-7,
                               err_msg=arg)
  for g in jax.grad(lambda *a: jnp.sum(attend(*a)[:, 9]), tuple(range(len(args))))(*f32(args)):
    np.testing.assert_array_equal(g[:, 10:], 0.0)


def test_chunk_form_by_platform_and_by_name():
  """None: scan on a CPU (this machine) and said so by explain; a bad name is refused."""
  q = jnp.zeros((1, 8, 2, 4))
  assert chunkwise.choose_form(None)[0] == ("scan" if jax.default_backend() == "cpu"
                                           else "parallel")
  assert attention_zoo.explain("deltanet", q, q, q, chunk_form="parallel") == (
      "deltanet: chunk_form 'parallel' (asked for by name)")
  assert attention_zoo.explain("retention", q, q, q).startswith(
      f"retention: chunk_form '{chunkwise.choose_form(None)[0]}' (platform")
  for name in MODULES:
    with pytest.raises(ValueError, match=rf"^{name}: chunk_form must be None or one of "
                                         r"\('scan', 'parallel'\), got 'fast'"):
      attention_zoo.get(name, chunk_form="fast")


def test_retention_decay_option():
  q, k, v, _ = _inputs("retention", seed=11)
  decay = (0.5, 0.9, 0.99, 0.999)
  _close(_attend("retention", q, k, v, {}, decay=decay, chunk_size=8),
         oracle("retention", q, k, v, decay=decay)[0])


@pytest.mark.parametrize("size", [1, 5, 23, 64])
@pytest.mark.parametrize("base", [1, 4])
def test_unit_lower_inverse(size, base):
  a = np.tril(np.random.default_rng(size).normal(size=(3, size, size)) * 0.3, -1)
  got = jax.jit(chunkwise.unit_lower_inverse, static_argnums=1)(jnp.asarray(a, jnp.float32),
                                                                base)
  np.testing.assert_allclose(got, np.linalg.inv(np.eye(size) + a), atol=1e-5)


def test_unit_lower_inverse_gradient():
  """Its own backward (-X^T g X^T on the strictly lower part) against autodiff of LU's."""
  rng = np.random.default_rng(0)
  a = jnp.asarray(np.tril(rng.normal(size=(3, 23, 23)) * 0.3, -1), jnp.float32)
  w = jnp.asarray(rng.normal(size=a.shape), jnp.float32)
  strict = jnp.tril(jnp.ones((23, 23), bool), -1)
  grad = lambda inverse: jax.jit(jax.grad(lambda a: jnp.sum(inverse(jnp.where(strict, a, 0.0))
                                                              * w)))(a)
  want = grad(lambda a: jnp.linalg.inv(jnp.eye(23) + a))
  np.testing.assert_allclose(grad(chunkwise.unit_lower_inverse), want, rtol=1e-4,
                             atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("name", list(MODULES))
def test_refusals_name_the_variant_and_the_argument(name):
  q, k, v, extra = _inputs(name)
  q, k, v = (jnp.asarray(x, jnp.float32) for x in (q, k, v))
  fn = ATTEND[name]
  refused = dict(bias=jnp.zeros((1, 1, T, T)), mask=jnp.ones((1, 1, T, T), bool),
                 local_window_size=(2, 2))
  for argument, value in refused.items():
    with pytest.raises(NotImplementedError, match=f"^{name} attention .*{argument}"):
      fn(q, k, v, **extra, is_causal=True, **{argument: value})
  with pytest.raises(NotImplementedError, match=f"^{name} attention .*is_causal=False"):
    fn(q, k, v, **extra)
  with pytest.raises(NotImplementedError, match=rf"^{name} attention .*S=30 .* T={T}"):
    fn(q, k[:, :30], v[:, :30], **extra, is_causal=True)
  for missing in extra:
    given = {n: x for n, x in extra.items() if n != missing}
    with pytest.raises(ValueError, match=rf"^{name}: {missing} is required.*\(2, 37, 4"):
      fn(q, k, v, **given, is_causal=True)
    with pytest.raises(ValueError, match=rf"^{name}: {missing} must have shape .* got \(2, 36"):
      fn(q, k, v, **{**extra, missing: extra[missing][:, 1:]}, is_causal=True)
    with pytest.raises(ValueError, match=rf"^{name}: {missing} must be floating point"):
      fn(q, k, v, **{**extra, missing: np.ones(extra[missing].shape, np.int32)},
         is_causal=True)


def test_bad_options_raise_naming_them():
  with pytest.raises(ValueError, match="gla: sub_chunk_size must be chunk_size over a power of"):
    gla.check_options(chunk_size=24, sub_chunk_size=4)
  with pytest.raises(ValueError, match="sub_chunk_size must be a positive int"):
    gla.check_options(sub_chunk_size=0)
  with pytest.raises(ValueError, match="retention: decay must be None or a tuple"):
    retention.check_options(decay=(0.5, 1.0))
  q, k, v = (jnp.asarray(x, jnp.float32) for x in _inputs("retention")[:3])
  with pytest.raises(ValueError, match="retention: decay has 2 values for N=4"):
    retention.retention_attention(q, k, v, is_causal=True, decay=(0.5, 0.9))
  for module in (deltanet, gated_deltanet):
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
      module.check_options(chunk_size=0)


@pytest.mark.parametrize("variant", ["gla", "gated_deltanet"])  # one wrapper serves all
def test_unbatched_call_is_a_batch_of_one(variant):
  q, k, v, extra = _inputs(variant, seed=12)
  fn = jax.jit(functools.partial(ATTEND[_base(variant)], is_causal=True))
  cast = lambda x: jnp.asarray(x, jnp.float32)
  got = fn(*(cast(x[1]) for x in (q, k, v)), **{n: cast(x[1]) for n, x in extra.items()})
  want = fn(*(cast(x[1:]) for x in (q, k, v)), **{n: cast(x[1:]) for n, x in extra.items()})
  np.testing.assert_array_equal(got, want[0])


def test_benchmark_times_every_variant_against_its_scan(tmp_path):
  from configs.bench import gated  # pylint: disable=import-outside-toplevel
  from experiments import benchmark  # pylint: disable=import-outside-toplevel
  config = gated.get_config().unlock()
  config.variants = ("retention", "retention:chunk_form='parallel'")  # one scan for both
  config.baselines = ("chunked",)
  config.lengths, config.heads, config.head_dim, config.repeats = (24,), 2, 8, 1
  table = benchmark.run(config, str(tmp_path))
  assert "| retention | 24 | forward_backward |" in table
  assert "| retention scan | 24 | forward |" in table
  parallel = [r for r in table.splitlines() if r.startswith("| retention:chunk_form")]
  assert len(parallel) == 2 and all(r.split(" | ")[4] != "—" for r in parallel)  # vs scan
  assert table.count("\n| ") == 1 + 4 * 2  # the header, then 4 labels x 2 modes
