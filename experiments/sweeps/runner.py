"""Runs a sweep: each run in its own process and workdir, resumable, failures recorded.

A run is *finished* when its metrics.jsonl holds the final evaluation, *failed* when its
workdir holds failure.json (the error and traceback), and otherwise pending: re-launching
the sweep resumes it from its latest checkpoint. Failed runs are not retried unless
`sweep.retry_failed`. A run whose metrics.jsonl is broken fails alone (its process says
which line), and never stops the sweep.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import signal
import sys
import time
import traceback

import tqdm

from experiments import metrics, train
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


def _train_in_child(config, workdir: str, parent: int) -> None:
  """The body of a run's process: output to log.txt, failure.json on an exception."""
  _die_with_parent(parent)
  os.makedirs(workdir, exist_ok=True)
  log = os.open(os.path.join(workdir, "log.txt"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
  os.dup2(log, 1), os.dup2(log, 2)
  try:
    train.train_and_evaluate(config, workdir)
  except KeyboardInterrupt:
    sys.exit(130)  # an interruption, not a failure: the run resumes on re-launch
  except Exception as e:  # pylint: disable=broad-except; any error fails this run only
    traceback.print_exc()
    _record_failure(workdir, f"{type(e).__name__}: {e}", traceback.format_exc())
    sys.exit(1)


def _die_with_parent(parent: int) -> None:
  """Linux: the kernel kills this process if the sweep's process dies, even by SIGKILL, so a
  re-launched sweep never finds an orphan still writing the same workdir."""
  try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    return
  if os.getppid() != parent:
    os._exit(1)


def _record_failure(workdir: str, error: str, details: str = "") -> None:
  with open(os.path.join(workdir, FAILURE), "w", encoding="utf-8") as f:
    json.dump({"error": error, "traceback": details}, f, indent=2)


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
  context = multiprocessing.get_context("spawn")  # JAX is not fork-safe
  running: dict[str, tuple] = {}
  steps = {run.name: _last_step(os.path.join(workdir, run.name)) for run in runs}
  progress = tqdm.tqdm(total=sum(run.config.num_train_steps for run in runs), unit="step",
                       desc=os.path.basename(os.path.normpath(workdir)), dynamic_ncols=True,
                       initial=sum(steps.values()))
  try:
    while pending or running:
      while pending and len(running) < sweep.parallel:
        run = pending.pop(0)
        run_dir = os.path.join(workdir, run.name)
        process = context.Process(target=_train_in_child, args=(run.config, run_dir, os.getpid()),
                                  name=run.name)
        process.start()
        running[run.name] = (process, run_dir, _oom_kills())
      time.sleep(POLL_SECONDS)
      for name, (process, run_dir, oom_kills) in list(running.items()):
        steps[name] = _last_step(run_dir)  # only running runs move
        if process.exitcode is None:
          continue
        del running[name]
        if process.exitcode != 0 and not os.path.exists(os.path.join(run_dir, FAILURE)):
          _record_failure(run_dir, _exit_reason(process.exitcode, oom_kills, _oom_kills()))
        states[name] = status(run_dir)
        write_results(workdir, runs)
        if states[name] == "failed":
          tqdm.tqdm.write(f"{name}: FAILED ({_error(run_dir)}); see {run_dir}/log.txt")
      progress.update(sum(steps.values()) - progress.n)
      counts = {s: list(states.values()).count(s) for s in ("finished", "failed")}
      progress.set_postfix(runs=f"{counts['finished']}/{len(runs)} done", failed=counts["failed"],
                           running=",".join(running) or "-")
  except KeyboardInterrupt:
    for process, *_ in running.values():
      process.terminate()
    raise
  finally:
    progress.close()
  write_results(workdir, runs)
  return states


def _exit_reason(code: int, oom_before: int | None, oom_after: int | None) -> str:
  """Why a run's process ended: its exit code, or the signal that killed it, and out of
  memory only where the kernel counted an out-of-memory kill meanwhile."""
  if code >= 0:
    return f"the run's process exited with code {code}"
  try:
    name = signal.Signals(-code).name
  except ValueError:
    name = f"signal {-code}"
  oom = (oom_before is not None and oom_after is not None and oom_after > oom_before)
  return (f"the run's process was killed by {name}" + (
      f" (out of memory: the kernel's OOM killer killed {oom_after - oom_before} process(es) "
      f"in this cgroup while it ran)" if oom else ""))


def _oom_kills() -> int | None:
  """The kernel's count of out-of-memory kills in this process's memory cgroup (v2's
  memory.events or v1's memory.oom_control), or None where neither can be read."""
  try:
    with open("/proc/self/cgroup", encoding="utf-8") as f:
      v2 = next((line.split(":", 2)[2].strip() for line in f if line.startswith("0::")), "/")
  except OSError:
    v2 = "/"
  for path in (os.path.join("/sys/fs/cgroup", v2.lstrip("/"), "memory.events"),
               "/sys/fs/cgroup/memory/memory.oom_control"):
    try:
      with open(path, encoding="utf-8") as f:
        for line in f:
          key, _, value = line.partition(" ")
          if key == "oom_kill":
            return int(value)
    except (OSError, ValueError):
      continue
  return None


def _error(run_dir: str) -> str:
  with open(os.path.join(run_dir, FAILURE), encoding="utf-8") as f:
    return json.load(f)["error"]
