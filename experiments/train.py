"""One experiment: train_and_evaluate(config, workdir).

Pure jitted train and eval steps over a TrainState (experiments/train_state.py, its
optimizer from experiments/optimizer.py); orbax checkpoints (model and data iterator)
resumed automatically from the workdir; metrics to metrics.jsonl and TensorBoard; a final
evaluation with greedy decoding or beam search (exact-sequence accuracy) on
config.decode_splits. The data arrive as this process's rows (data.Placement).
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
from flax import nnx

from experiments import (checks, checkpoints, console, data, decode, footprint, metrics,
                         objectives, optimizer, parallel, rundir, tasks)
from experiments.train_state import TrainState, model_config


def _sums(objective, graphdef, params, batch, rngs=None):
  logits = objective.logits(nnx.merge(graphdef, params), batch, rngs)
  return objectives.sums(objective, logits, batch)


def train_step(objective, dropout_key, state: TrainState, batch):
  """One optimizer step; dropout is keyed by the step, so a resumed run repeats it exactly."""
  key = jax.random.fold_in(dropout_key, state.step)

  def loss_fn(params):
    rngs = nnx.Rngs(dropout=key)  # made inside the traced function that draws from it
    sums = _sums(objective, state.graphdef, params, batch, rngs)
    return sums["loss_sum"] / jnp.maximum(sums["count"], 1), sums

  (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  return state.apply_gradients(grads, loss), {
      "loss": loss, objective.accuracy: sums["correct"] / sums["count"],
      "grad_norm": optax.tree.norm(grads)}


def _decoded_exact(graphdef, beam_size, params, batch):
  """Rows that beam search (greedy at beam size 1) decodes exactly, over the global batch."""
  return decode.exact_matches(decode.beam_search(graphdef, params, batch, beam_size), batch)


@dataclasses.dataclass
class _Steps:
  """The jitted pure functions of one run (graphdef and optimizer are static)."""
  train: object
  evaluate: object
  decoded_exact: object
  batch_sharding: object
  objective: objectives.Objective


def _totals(steps, params, task, cfg, split, max_batches=None, decoding=False) -> dict:
  """The split's summed metrics (with decoding: `decoded_exact`, rows decoded exactly)."""
  totals = dict(loss_sum=0.0, correct=0, count=0, exact=0, rows=0, decoded_exact=0)
  for batch in data.eval_batches(task, cfg, steps.objective.shape, split, max_batches):
    on_devices = parallel.to_global(batch, steps.batch_sharding)  # this process's rows
    for k, v in jax.device_get(steps.evaluate(params, on_devices)).items():
      totals[k] += v.item()
    if decoding:
      totals["decoded_exact"] += int(steps.decoded_exact(params, on_devices))
  return totals


def _metrics(steps, prefix, totals, decoding=False) -> dict:
  out = objectives.metrics(steps.objective, prefix, totals)
  if decoding:
    out[f"{prefix}_exact_accuracy"] = totals["decoded_exact"] / max(totals["rows"], 1)
  return out


def _evaluate(steps, params, task, cfg, split, max_batches=None) -> dict:
  return _metrics(steps, split, _totals(steps, params, task, cfg, split, max_batches))


def _final_evaluation(steps, params, task, cfg, splits, starting=lambda split: None) -> dict:
  """Metrics of every split in `splits` ("test" meaning the task's test splits), decoding
  where the objective does; with several test splits (MQAR's (L, N) pairs) also their
  pooled `test_*` metrics. `starting(split)` is called as each split begins (the bar)."""
  named = [s for split in splits
           for s in (task.test_splits if split == "test" else (split,)) if s in task.sources]
  final, tests = {}, []
  for split in dict.fromkeys(named):
    starting(split)
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
  A finished run returns its final metrics unchanged, unless `config.reevaluate`. A workdir
  holding a run begun under another config is refused (rundir.config_changes: the mesh,
  num_train_steps, evaluation settings and the like may change on a re-launch).
  """
  with console.config_mistakes():  # before any data is built; launch.py prints them plainly
    checks.check_config(config)
    mesh = parallel.make_mesh(config.mesh)
    parallel.check_batches(mesh.shape, config)
    footprint.check_fits(config, dict(mesh.shape))
    changed = rundir.config_changes(workdir, config)
    if changed:
      raise ValueError(
          f"{workdir} holds a run begun with another config ({'; '.join(changed[:3])}"
          f"{f'; {len(changed) - 3} more' if len(changed) > 3 else ''}): resuming it would mix "
          f"two experiments under one name. Give another --workdir, or remove {workdir} to "
          f"start again")
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
  task = data.load_task(config.data, data.Placement.of(mesh))
  objective = objectives.OBJECTIVES[tasks.model_shape(config)]
  tx, schedule = optimizer.from_config(config.optimizer, config.num_train_steps)
  state = TrainState.create(model_config(config.model, task.vocab_size, objective.shape,
                                         task.num_classes), tx, config.seed)
  state_sharding = parallel.state_shardings(mesh, state)
  state = jax.device_put(state, state_sharding)
  batch_sharding = parallel.batch_sharding(mesh)
  train_iter = iter(data.train_dataset(task, config.data, objective.shape, config.seed,
                                       config.model.pooling))
  ckpt = checkpoints.Checkpoints(workdir, config.checkpoint_every, config.keep_checkpoints)
  state, start = ckpt.restore(state, train_iter)
  writer = metrics.MetricsWriter(workdir, start, enabled=first_process)

  dropout_key = jax.random.key(config.seed + 1)
  local = next(train_iter)
  started = time.perf_counter()
  train = jax.jit(functools.partial(train_step, objective, dropout_key),
                  in_shardings=(state_sharding, batch_sharding),
                  out_shardings=(state_sharding, parallel.replicated(mesh)), donate_argnums=0)
  train = train.lower(state, parallel.to_global(local, batch_sharding)).compile()
  compile_seconds = time.perf_counter() - started
  steps = _Steps(train=train,
                 evaluate=jax.jit(functools.partial(_sums, objective, state.graphdef)),
                 decoded_exact=jax.jit(functools.partial(_decoded_exact, state.graphdef,
                                                         config.beam_size)),
                 batch_sharding=batch_sharding, objective=objective)
  memory = train.memory_analysis()
  run_info = dict(compile_seconds=compile_seconds, devices=jax.device_count(),
                  train_step_memory_mib=(  # per device
                      (memory.temp_size_in_bytes + memory.argument_size_in_bytes) / 2**20
                      if memory else None))

  pending, tokens = [], 0
  interval_start = time.perf_counter()
  progress = console.progress(total=config.num_train_steps, initial=start, unit="step",
                              desc=os.path.basename(os.path.normpath(workdir)),
                              disable=not (config.progress_bar and first_process))
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
        progress.set_postfix(loss=f"{logged['train_loss']:.3f}", refresh=False,
                             steps_per_s=f"{logged['steps_per_second']:.1f}")
        pending, tokens, interval_start = [], 0, time.perf_counter()
      if step % config.eval_every == 0 or step == config.num_train_steps:
        evaluated = _evaluate(steps, state.params, task, config.data, "validation",
                              config.eval_batches)
        writer.write(step, evaluated)
        ckpt.save_best(step, state, {"eval_loss": evaluated["validation_loss"]})
      ckpt.save(step, state, train_iter, last=step == config.num_train_steps)
      progress.update(1)
      if step < config.num_train_steps:
        local = next(train_iter)
    final = _final_evaluation(steps, state.params, task, config.data, config.decode_splits,
                              lambda split: progress.set_postfix_str(f"final evaluation: {split}"))
    longest = max(length for length, _ in task.lengths.values())
    final["state_size"] = state.model().state_size(longest)
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
  bad = int(state.nonfinite_step)
  if bad >= 0:
    raise FloatingPointError(f"the training loss became NaN or Inf at step {bad}")
