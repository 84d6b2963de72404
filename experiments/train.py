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
from experiments import (checks, checkpoints, data, decode, footprint, metrics,
                         objectives, parallel, rundir, tasks)
from experiments.model import Transformer, TransformerConfig


def model_config(config, vocab_size: int, shape: str = "encoder_decoder",
                 num_classes: int | None = None) -> TransformerConfig:
  """The typed model config: model code never reads a ConfigDict."""
  m = config.model
  used = {m.attention, m.cross_attention or m.attention, m.encoder_attention or m.attention}
  options = tuple((name, registry.frozen(m.options[name])) for name in sorted(used))
  return TransformerConfig(
      vocab_size=vocab_size, shape=shape, pooling=m.pooling, positions=m.positions,
      num_classes=num_classes,
      d_model=m.d_model, num_heads=m.num_heads,
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


def _sums(objective, graphdef, params, batch, rngs=None):
  logits = objective.logits(nnx.merge(graphdef, params), batch, rngs)
  return objectives.sums(objective, logits, batch)


def train_step(graphdef, tx, objective, dropout_key, state, batch):
  """One AdamW step; dropout is keyed by the step, so a resumed run repeats it exactly."""
  key = jax.random.fold_in(dropout_key, state["step"])

  def loss_fn(params):
    rngs = nnx.Rngs(dropout=key)  # made inside the traced function that draws from it
    sums = _sums(objective, graphdef, params, batch, rngs)
    return sums["loss_sum"] / jnp.maximum(sums["count"], 1), sums

  (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  finite = jnp.isfinite(loss)
  new_state = dict(
      step=state["step"] + 1, params=optax.apply_updates(state["params"], updates),
      opt_state=opt_state,
      nonfinite_step=jnp.where((state["nonfinite_step"] < 0) & ~finite, state["step"] + 1,
                               state["nonfinite_step"]))
  return new_state, {"loss": loss, objective.accuracy: sums["correct"] / sums["count"],
                     "grad_norm": optax.tree.norm(grads)}


@dataclasses.dataclass
class _Steps:
  """The jitted pure functions of one run (graphdef and optimizer are static)."""
  train: object
  evaluate: object
  decode: object
  batch_sharding: object
  objective: objectives.Objective


def _totals(steps, params, task, cfg, split, max_batches=None, decoding=False) -> dict:
  """The split's summed metrics (with decoding: `decoded_exact`, rows decoded exactly)."""
  totals = dict(loss_sum=0.0, correct=0, count=0, exact=0, rows=0, decoded_exact=0)
  for batch in data.eval_batches(task, cfg, steps.objective.shape, split, max_batches):
    on_devices = parallel.to_global(parallel.process_rows(batch), steps.batch_sharding)
    for k, v in jax.device_get(steps.evaluate(params, on_devices)).items():
      totals[k] += v.item()
    if decoding:
      decoded = parallel.to_host(steps.decode(params, on_devices))
      totals["decoded_exact"] += int(decode.exact_matches(decoded, batch))
  return totals


def _metrics(steps, prefix, totals, decoding=False) -> dict:
  out = objectives.metrics(steps.objective, prefix, totals)
  if decoding:
    out[f"{prefix}_exact_accuracy"] = totals["decoded_exact"] / max(totals["rows"], 1)
  return out


def _evaluate(steps, params, task, cfg, split, max_batches=None) -> dict:
  return _metrics(steps, split, _totals(steps, params, task, cfg, split, max_batches))


def _final_evaluation(steps, params, task, cfg, splits) -> dict:
  """Metrics of every split in `splits` ("test" meaning the task's test splits), decoding
  where the objective does; with several test splits (MQAR's (L, N) pairs) also their
  pooled `test_*` metrics."""
  named = [s for split in splits
           for s in (task.test_splits if split == "test" else (split,)) if s in task.sources]
  final, tests = {}, []
  for split in dict.fromkeys(named):
    totals = _totals(steps, params, task, cfg, split, decoding=steps.objective.decodes)
    final.update(_metrics(steps, split, totals, steps.objective.decodes))
    if split in task.test_splits:
      tests.append(totals)
  if len(tests) > 1:
    pooled = {k: sum(t[k] for t in tests) for k in tests[0]}
    final.update(_metrics(steps, "test", pooled, steps.objective.decodes))
  return final


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (resuming from workdir if it holds a checkpoint) and returns the final metrics.

  Data-parallel over every device of every process (config.mesh, experiments/parallel.py).
  A finished run returns its final metrics unchanged, unless `config.reevaluate`.
  """
  checks.check_config(config)
  mesh = parallel.make_mesh(config.mesh)
  parallel.check_batches(mesh.shape, config)
  footprint.check_fits(config, dict(mesh.shape))  # before any data is built
  os.makedirs(workdir, exist_ok=True)
  with rundir.hold(workdir, jax.process_index()), jax.set_mesh(mesh):  # mesh: for ring
    return _train_and_evaluate(config, workdir, mesh)


def _finished(config, workdir: str) -> dict | None:
  """A finished run's final metrics (it is left as it is), or None: train or re-evaluate."""
  records = metrics.read(workdir)  # a broken metrics.jsonl fails here, naming the line
  done = next((r for r in reversed(records) if r.get("final")), None)
  if done is None:
    return None
  if done["step"] != config.num_train_steps:
    rundir.say(workdir, f"its final evaluation at step {done['step']} is replaced: the run "
                        f"now trains to step {config.num_train_steps}")
    return None
  if config.reevaluate:
    rundir.say(workdir, f"re-evaluating the finished run (step {done['step']}); its final "
                        f"record is replaced")
    return None
  final = metrics.final(records)
  path = os.path.join(workdir, "final_metrics.json")
  if jax.process_index() == 0 and not os.path.exists(path):  # killed before writing it
    rundir.write_atomic(path, json.dumps(final, indent=2))
  rundir.say(workdir, f"already finished at step {done['step']} (final metrics in "
                      f"metrics.jsonl); nothing to do. --config.reevaluate=True evaluates it "
                      f"again")
  return final


def _train_and_evaluate(config, workdir: str, mesh) -> dict:
  first_process = jax.process_index() == 0  # the one that writes files besides checkpoints
  final = _finished(config, workdir)
  if final is not None:
    return final
  if first_process:
    rundir.write_atomic(os.path.join(workdir, "config.json"),
                        config.to_json_best_effort(indent=2))
  task = data.load_task(config.data)
  task = dataclasses.replace(task, lengths=parallel.split_lengths(task.lengths,
                                                                 mesh.shape["sequence"]))
  objective = objectives.OBJECTIVES[tasks.model_shape(config)]
  model = Transformer(model_config(config, task.vocab_size, objective.shape, task.num_classes),
                      rngs=nnx.Rngs(config.seed))
  graphdef, params = nnx.split(model)
  schedule = learning_rate_schedule(config.optimizer, config.num_train_steps)
  tx = optimizer(config.optimizer, schedule)
  state = dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
               nonfinite_step=jnp.full((), -1, jnp.int32))
  state_sharding = parallel.state_shardings(mesh, state)
  state = jax.device_put(state, state_sharding)
  batch_sharding = parallel.batch_sharding(mesh)
  train_iter = iter(data.train_dataset(task, config.data, objective.shape, config.seed,
                                       jax.process_index(), jax.process_count()))
  ckpt = checkpoints.Checkpoints(workdir, config.checkpoint_every, config.keep_checkpoints)
  state, start = ckpt.restore(state, train_iter)
  writer = metrics.MetricsWriter(workdir, start, enabled=first_process)

  dropout_key = jax.random.key(config.seed + 1)
  local = next(train_iter)
  started = time.perf_counter()
  train = jax.jit(functools.partial(train_step, graphdef, tx, objective, dropout_key),
                  in_shardings=(state_sharding, batch_sharding),
                  out_shardings=(state_sharding, parallel.replicated(mesh)), donate_argnums=0)
  train = train.lower(state, parallel.to_global(local, batch_sharding)).compile()
  compile_seconds = time.perf_counter() - started
  steps = _Steps(train=train, evaluate=jax.jit(functools.partial(_sums, objective, graphdef)),
                 decode=jax.jit(functools.partial(decode.beam_search, graphdef,
                                                  beam_size=config.beam_size)),
                 batch_sharding=batch_sharding, objective=objective)
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
      tokens += jax.process_count() * objective.tokens(local)  # all processes
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
    final = _final_evaluation(steps, state["params"], task, config.data, config.decode_splits)
    final["state_size"] = model.state_size(max(length for length, _ in task.lengths.values()))
    ckpt.wait()  # the final record marks the run finished: its checkpoints come first
    rundir.kill_at("before_final_write", config.num_train_steps)
    writer.write(config.num_train_steps, {**final, "final": True})
    rundir.kill_at("after_final_write", config.num_train_steps)
  finally:
    progress.close()
    ckpt.close()
    writer.close()
  if first_process:
    rundir.write_atomic(os.path.join(workdir, "final_metrics.json"), json.dumps(final, indent=2))
  parallel.barrier("run finished")  # processes leave together (jax.distributed's shutdown)
  return final


def _peak_rss_mib() -> float:
  """The whole process's peak resident memory so far (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _check_finite(state) -> None:
  bad = int(state["nonfinite_step"])
  if bad >= 0:
    raise FloatingPointError(f"the training loss became NaN or Inf at step {bad}")
