"""One experiment: train_and_evaluate(config, workdir).

Pure jitted train and eval steps over a state pytree {step, params, opt_state,
nonfinite_step}; orbax checkpoints (model and data iterator) resumed automatically from
the workdir; metrics to metrics.jsonl and TensorBoard; a final evaluation with greedy
decoding or beam search (exact-sequence accuracy) on config.decode_splits.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx

from attention_zoo import registry
from experiments import checks, checkpoints, data, decode, metrics, parallel
from experiments.model import Transformer, TransformerConfig


def model_config(config, vocab_size: int) -> TransformerConfig:
  """The typed model config: model code never reads a ConfigDict."""
  m = config.model
  used = {m.attention, m.cross_attention or m.attention, m.encoder_attention or m.attention}
  options = tuple((name, registry.frozen(m.options[name])) for name in sorted(used))
  return TransformerConfig(
      vocab_size=vocab_size, d_model=m.d_model, num_heads=m.num_heads,
      num_kv_heads=m.num_kv_heads, d_ff=m.d_ff, num_encoder_layers=m.num_encoder_layers,
      num_decoder_layers=m.num_decoder_layers, dropout_rate=m.dropout_rate,
      attention=m.attention, cross_attention=m.cross_attention,
      encoder_attention=m.encoder_attention, attention_options=options)


def learning_rate_schedule(cfg, num_steps: int) -> optax.Schedule:
  warmup = optax.linear_schedule(0.0, cfg.learning_rate, max(cfg.warmup_steps, 1))
  if cfg.decay == "cosine":
    decay = optax.cosine_decay_schedule(cfg.learning_rate, max(num_steps - cfg.warmup_steps, 1))
  elif cfg.decay == "rsqrt":
    decay = lambda s: cfg.learning_rate * jnp.sqrt(max(cfg.warmup_steps, 1) /
                                                   (s + max(cfg.warmup_steps, 1)))
  elif cfg.decay == "step":
    decay = optax.piecewise_constant_schedule(
        cfg.learning_rate, {cfg.drop_at - cfg.warmup_steps: cfg.drop_factor})
  else:
    decay = optax.constant_schedule(cfg.learning_rate)
  return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def optimizer(cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
  if cfg.name == "radam":
    update = optax.chain(optax.scale_by_radam(b1=cfg.b1, b2=cfg.b2),
                         optax.add_decayed_weights(cfg.weight_decay),
                         optax.scale_by_learning_rate(schedule))
  else:
    update = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), update)


def token_metrics(logits, batch) -> dict:
  """Sums over the real target tokens: loss, correct tokens, token count."""
  weights = jnp.arange(batch["targets"].shape[1]) < batch["target_lengths"][:, None]
  loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                         batch["targets"])
  correct = (logits.argmax(-1) == batch["targets"]) & weights
  return dict(loss_sum=jnp.sum(loss * weights), correct=jnp.sum(correct),
              tokens=jnp.sum(weights))


def _forward(graphdef, params, batch, rngs=None):
  model = nnx.merge(graphdef, params)
  return model(batch["inputs"], batch["input_lengths"], batch["decoder_inputs"],
               batch["target_lengths"], rngs=rngs)


def train_step(graphdef, tx, dropout_key, state, batch):
  """One AdamW step; dropout is keyed by the step, so a resumed run repeats it exactly."""
  key = jax.random.fold_in(dropout_key, state["step"])

  def loss_fn(params):
    rngs = nnx.Rngs(dropout=key)  # made inside the traced function that draws from it
    sums = token_metrics(_forward(graphdef, params, batch, rngs), batch)
    return sums["loss_sum"] / jnp.maximum(sums["tokens"], 1), sums

  (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  finite = jnp.isfinite(loss)
  new_state = dict(
      step=state["step"] + 1, params=optax.apply_updates(state["params"], updates),
      opt_state=opt_state,
      nonfinite_step=jnp.where((state["nonfinite_step"] < 0) & ~finite, state["step"] + 1,
                               state["nonfinite_step"]))
  return new_state, dict(loss=loss, token_accuracy=sums["correct"] / sums["tokens"],
                         grad_norm=optax.tree.norm(grads))


def eval_step(graphdef, params, batch):
  return token_metrics(_forward(graphdef, params, batch), batch)


@dataclasses.dataclass
class _Steps:
  """The jitted pure functions of one run (graphdef and optimizer are static)."""
  train: object
  evaluate: object
  decode: object
  batch_sharding: object


def _evaluate(steps, params, task, cfg, split, max_batches=None, decoding=False) -> dict:
  totals = dict(loss_sum=0.0, correct=0, tokens=0, exact=0, sequences=0)
  for batch in data.eval_batches(task, cfg, split, max_batches):
    on_devices = parallel.to_global(parallel.process_rows(batch), steps.batch_sharding)
    sums = jax.device_get(steps.evaluate(params, on_devices))
    for k in ("loss_sum", "correct", "tokens"):
      totals[k] += float(sums[k])
    totals["sequences"] += int(np.sum(batch["target_lengths"] > 0))
    if decoding:
      decoded = parallel.to_host(steps.decode(params, on_devices))
      totals["exact"] += int(decode.exact_matches(decoded, batch))
  out = {f"{split}_loss": totals["loss_sum"] / max(totals["tokens"], 1),
         f"{split}_token_accuracy": totals["correct"] / max(totals["tokens"], 1)}
  if decoding:
    out[f"{split}_exact_accuracy"] = totals["exact"] / max(totals["sequences"], 1)
  return out


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (resuming from workdir if it holds a checkpoint) and returns the final metrics.

  Data-parallel over every device of every process (config.mesh, experiments/parallel.py).
  """
  checks.check_config(config)
  mesh = parallel.make_mesh(config.mesh)
  parallel.check_batches(mesh, config)
  with jax.set_mesh(mesh):  # ring attention finds its mesh axis here
    return _train_and_evaluate(config, workdir, mesh)


def _train_and_evaluate(config, workdir: str, mesh) -> dict:
  first_process = jax.process_index() == 0  # the one that writes files besides checkpoints
  os.makedirs(workdir, exist_ok=True)
  if first_process:
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))
  task = data.load_task(config.data)
  task = dataclasses.replace(task, lengths=parallel.split_lengths(task.lengths,
                                                                 mesh.shape["sequence"]))
  model = Transformer(model_config(config, task.vocab_size), rngs=nnx.Rngs(config.seed))
  graphdef, params = nnx.split(model)
  schedule = learning_rate_schedule(config.optimizer, config.num_train_steps)
  tx = optimizer(config.optimizer, schedule)
  state = dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
               nonfinite_step=jnp.full((), -1, jnp.int32))
  state_sharding = parallel.state_shardings(mesh, state)
  state = jax.device_put(state, state_sharding)
  batch_sharding = parallel.batch_sharding(mesh)
  train_iter = iter(data.train_dataset(task, config.data, config.seed, jax.process_index(),
                                       jax.process_count()))
  ckpt = checkpoints.Checkpoints(workdir, config.checkpoint_every, config.keep_checkpoints)
  state, start = ckpt.restore(state, train_iter)
  writer = metrics.MetricsWriter(workdir, start, enabled=first_process)

  dropout_key = jax.random.key(config.seed + 1)
  local = next(train_iter)
  started = time.perf_counter()
  train = jax.jit(functools.partial(train_step, graphdef, tx, dropout_key),
                  in_shardings=(state_sharding, batch_sharding),
                  out_shardings=(state_sharding, parallel.replicated(mesh)), donate_argnums=0)
  train = train.lower(state, parallel.to_global(local, batch_sharding)).compile()
  compile_seconds = time.perf_counter() - started
  steps = _Steps(train=train, evaluate=jax.jit(functools.partial(eval_step, graphdef)),
                 decode=jax.jit(functools.partial(decode.beam_search, graphdef,
                                                  beam_size=config.beam_size)),
                 batch_sharding=batch_sharding)
  memory = train.memory_analysis()
  run_info = dict(compile_seconds=compile_seconds, devices=jax.device_count(),
                  train_step_memory_mib=(  # per device
                      (memory.temp_size_in_bytes + memory.argument_size_in_bytes) / 2**20
                      if memory else None))

  pending, tokens = [], 0
  interval_start = time.perf_counter()
  progress = tqdm.tqdm(total=config.num_train_steps, initial=start, desc=os.path.basename(
      os.path.normpath(workdir)), disable=not (config.progress_bar and first_process),
                       dynamic_ncols=True)
  try:
    for step in range(start + 1, config.num_train_steps + 1):
      state, step_metrics = steps.train(state, parallel.to_global(local, batch_sharding))
      pending.append(step_metrics)
      tokens += jax.process_count() * int(local["input_lengths"].sum() +
                                          local["target_lengths"].sum())  # all processes
      if step % config.log_every == 0 or step == config.num_train_steps:
        _check_finite(state)
        seconds = time.perf_counter() - interval_start
        logged = {f"train_{k}": float(np.mean(v)) for k, v in
                  jax.tree.map(lambda *x: np.stack(x), *jax.device_get(pending)).items()}
        logged.update(learning_rate=float(schedule(step)),
                      steps_per_second=len(pending) / seconds, tokens_per_second=tokens / seconds,
                      process_peak_rss_mib=_peak_rss_mib(),
                      **(run_info if step - len(pending) == start else {}))
        writer.write(step, logged)
        progress.set_postfix(loss=f"{logged['train_loss']:.3f}",
                             steps_per_s=f"{logged['steps_per_second']:.1f}")
        pending, tokens, interval_start = [], 0, time.perf_counter()
      if step % config.eval_every == 0 or step == config.num_train_steps:
        evaluated = _evaluate(steps, state["params"], task, config.data, "validation",
                              config.eval_batches)
        writer.write(step, evaluated)
        ckpt.save_best(step, state, {"eval_loss": evaluated["validation_loss"]})
      ckpt.save(step, state, train_iter, last=step == config.num_train_steps)
      progress.update(1)
      if step < config.num_train_steps:
        local = next(train_iter)
    final = {}
    for split in config.decode_splits:
      if split in task.sources:
        final.update(_evaluate(steps, state["params"], task, config.data, split, decoding=True))
    writer.write(config.num_train_steps, {**final, "final": True})
  finally:
    progress.close()
    ckpt.close()
    writer.close()
  if first_process:
    with open(os.path.join(workdir, "final_metrics.json"), "w", encoding="utf-8") as f:
      json.dump(final, f, indent=2)
  parallel.barrier("run finished")  # processes leave together (jax.distributed's shutdown)
  return final


def _peak_rss_mib() -> float:
  """The whole process's peak resident memory so far (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _check_finite(state) -> None:
  bad = int(state["nonfinite_step"])
  if bad >= 0:
    raise FloatingPointError(f"the training loss became NaN or Inf at step {bad}")
