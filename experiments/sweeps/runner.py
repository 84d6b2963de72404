"""Runs a sweep: each run in its own process and workdir, resumable, failures recorded.

A run is *finished* when its metrics.jsonl holds the final evaluation, *failed* when its
workdir holds failure.json (the error and traceback), and otherwise pending: re-launching
the sweep resumes it from its latest checkpoint. Failed runs are not retried unless
`sweep.retry_failed`. A run whose metrics.jsonl is broken fails alone (its process says
which line), and never stops the sweep. A run not begun whose config a finished run of
another sweep has, field for field (in a workdir of `sweep.reuse`), is copied from there
rather than trained again. A run begun under another config than the sweep's (the sweep
was edited since) stops the sweep before anything runs.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback

import tqdm

from experiments import children, console, metrics, rundir, train
from experiments.sweeps import grid

FAILURE = "failure.json"
POLL_SECONDS = 1.0


def status(workdir: str) -> str:
  if os.path.exists(os.path.join(workdir, FAILURE)):
    return "failed"
  if metrics.final(_records(workdir)) is not None:
    return "finished"
  return "pending"  # a broken metrics.jsonl too: its process fails, naming the line


def _records(workdir: str) -> list[dict]:
  """The run's metrics, or none where its metrics.jsonl is broken (one run's broken file
  must not stop the sweep; the run's own process reports it)."""
  try:
    return metrics.read(workdir)
  except ValueError:
    return []


def _last_step(workdir: str) -> int:
  return max((r["step"] for r in _records(workdir)), default=0)


def _train_in_child(config, workdir: str) -> None:
  """The body of a run's process: output to log.txt, failure.json on an exception."""
  os.makedirs(workdir, exist_ok=True)
  log = os.open(os.path.join(workdir, "log.txt"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
  os.dup2(log, 1), os.dup2(log, 2)
  console.quiet()  # a fresh process: the libraries' noise would fill log.txt
  try:
    train.train_and_evaluate(config, workdir)
  except KeyboardInterrupt:
    sys.exit(130)  # an interruption, not a failure: the run resumes on re-launch
  except Exception as e:  # pylint: disable=broad-except; any error fails this run only
    traceback.print_exc()
    _record_failure(workdir, f"{type(e).__name__}: {e}", traceback.format_exc())
    sys.exit(1)


def _record_failure(workdir: str, error: str, details: str = "") -> None:
  os.makedirs(workdir, exist_ok=True)  # a child can fail before it made its run directory
  with open(os.path.join(workdir, FAILURE), "w", encoding="utf-8") as f:
    json.dump({"error": error, "traceback": details}, f, indent=2)


def _config_json(config) -> dict:
  return json.loads(config.to_json_best_effort())


def check_begun_runs(workdir: str, runs: list[grid.Run]) -> None:
  """Refuses, before anything runs, runs begun in `workdir` under another config (the sweep's
  config was changed since): keeping or resuming them would mix two experiments under one
  name. Names each such run and the fields that differ (rundir.config_changes: the fields
  a resumed run may change, such as the mesh or num_train_steps, are not among them)."""
  problems = []
  for run in runs:
    differ = rundir.config_changes(os.path.join(workdir, run.name), run.config)
    if differ:
      problems.append(f"{os.path.join(workdir, run.name)} ({'; '.join(differ[:3])}"
                      f"{f'; {len(differ) - 3} more' if len(differ) > 3 else ''})")
  if problems:
    raise ValueError(
        f"{len(problems)} run(s) of this sweep were begun in {workdir} with another config; "
        f"keeping or resuming them would mix two experiments under one name: "
        f"{'. '.join(problems)}. Remove those run directories to run them again, or give the "
        f"sweep another --workdir")


def reuse(sweep, workdir: str, runs: list[grid.Run]) -> dict[str, str]:
  """Copies into `workdir` each run not begun here that a workdir of `sweep.reuse` (paths
  relative to the current directory, as --workdir is) holds finished with the same config;
  returns {run name: where it came from}."""
  found = {}
  for source in sweep.get("reuse") or ():
    if not os.path.isdir(source):
      print(f"sweep.reuse: {os.path.abspath(source)} does not exist (yet): nothing reused "
            f"from it")
      continue
    for name in sorted(os.listdir(source)):
      candidate = os.path.join(source, name)
      try:
        with open(os.path.join(candidate, "config.json"), encoding="utf-8") as f:
          config = json.dumps(json.load(f), sort_keys=True)
      except (OSError, ValueError):  # not a run, or a broken one: not reused
        continue
      if status(candidate) == "finished":
        found.setdefault(config, candidate)
  copied = {}
  for run in runs:
    run_dir = os.path.join(workdir, run.name)
    key = json.dumps(_config_json(run.config), sort_keys=True)
    if key in found and not os.path.exists(run_dir):  # one begun here resumes its own
      partial = run_dir + ".partial"  # a kill mid-copy leaves no half-copied run
      shutil.rmtree(partial, ignore_errors=True)
      shutil.copytree(found[key], partial)
      os.rename(partial, run_dir)
      copied[run.name] = found[key]
  return copied


def write_results(workdir: str, runs: list[grid.Run]) -> str:
  """results.json: every run's overrides, status and final metrics (or its error)."""
  results = []
  for run in runs:
    run_dir = os.path.join(workdir, run.name)
    entry = dict(name=run.name, labels=run.labels, overrides=run.overrides,
                 status=status(run_dir))
    final = metrics.final(_records(run_dir))
    if final is not None:
      entry["final"] = final
    if entry["status"] == "failed":
      entry["error"] = _error(run_dir)
    results.append(entry)
  path = os.path.join(workdir, "results.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  return path


def run_all(sweep, workdir: str, runs: list[grid.Run]) -> dict[str, str]:
  """Runs what is pending, `sweep.parallel` at a time; returns each run's final status."""
  if sweep.retry_failed:
    for run in runs:
      failure = os.path.join(workdir, run.name, FAILURE)
      if os.path.exists(failure):
        os.remove(failure)
  states = {run.name: status(os.path.join(workdir, run.name)) for run in runs}
  pending = [run for run in runs if states[run.name] == "pending"]
  running: dict[str, tuple] = {}
  steps = {run.name: _last_step(os.path.join(workdir, run.name)) for run in runs}
  progress = console.progress(total=sum(run.config.num_train_steps for run in runs),
                              unit="step", desc=os.path.basename(os.path.normpath(workdir)),
                              initial=sum(steps.values()))
  try:
    while pending or running:
      while pending and len(running) < sweep.parallel:
        run = pending.pop(0)
        run_dir = os.path.join(workdir, run.name)
        oom_kills = children.oom_kills()
        running[run.name] = (children.spawn(_train_in_child, run.config, run_dir, name=run.name),
                             run_dir, oom_kills)
      time.sleep(POLL_SECONDS)
      for name, (process, run_dir, oom_kills) in list(running.items()):
        steps[name] = _last_step(run_dir)  # only running runs move
        if process.exitcode is None:
          continue
        del running[name]
        if process.exitcode != 0 and not os.path.exists(os.path.join(run_dir, FAILURE)):
          _record_failure(run_dir, children.exit_reason(process.exitcode, oom_kills,
                                                        children.oom_kills(), "the run's process"))
        states[name] = status(run_dir)
        write_results(workdir, runs)
        if states[name] == "failed":
          tqdm.tqdm.write(f"{name}: FAILED ({_error(run_dir)}); see {run_dir}/log.txt")
      progress.update(sum(steps.values()) - progress.n)
      progress.set_postfix_str(doing(runs, states, running, steps), refresh=False)
  except KeyboardInterrupt:
    for process, *_ in running.values():
      process.terminate()
    raise
  finally:
    progress.close()
  write_results(workdir, runs)
  return states


def doing(runs: list[grid.Run], states: dict[str, str], running, steps: dict[str, int]) -> str:
  """The bar's text: which runs of how many are running (and which are in their final
  evaluation, when the step count stands still), how many are done and failed."""
  now = [f"run {i} of {len(runs)}: {run.name}" + (
      " (final evaluation)" if steps[run.name] >= run.config.num_train_steps else "")
         for i, run in enumerate(runs, 1) if run.name in running]
  done = list(states.values()).count("finished")
  failed = list(states.values()).count("failed")
  return "; ".join(now + [f"{done} done"] + ([f"{failed} failed"] if failed else []))


def _error(run_dir: str) -> str:
  with open(os.path.join(run_dir, FAILURE), encoding="utf-8") as f:
    return json.load(f)["error"]
