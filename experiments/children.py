"""The one way this project starts a child process: Python code or a function, in a fresh
interpreter.

Why a fresh process: XLA reads its flags (a host-platform device count, say) only when JAX
starts, a TPU admits one process and a GPU gives most of its memory to the first, and a
run's process must be killable without taking its sweep down.

- `start(code)` / `run(code)`: `python -c code` (or, given `argv`, `python *argv`, e.g.
  `launch.py sweep ...`) with the checkout as its working directory (so `import
  attention_zoo, experiments, configs` finds the checkout's packages), the environment
  overridden by `env` and, given `devices`, XLA's host-platform device count.
- `spawn(target, *args)`: `target(*args)` in a spawned process (JAX is not fork-safe) that
  the kernel kills when its parent dies, even by SIGKILL (Linux).
- `exit_reason`: why a child ended, its signal named, and "out of memory" only where the
  kernel's OOM-kill counter rose while it ran (`oom_kills`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Finished:
  """A child that ran to its end (or was killed): its exit code, output and why it ended."""
  returncode: int
  stdout: str
  stderr: str
  reason: str | None  # None when it exited with 0, else `exit_reason`'s sentence

  def last_json(self):
    """The JSON the child printed on its last line of output."""
    return json.loads(self.stdout.strip().splitlines()[-1])


def environment(devices: int | None = None, **env: str | None) -> dict[str, str]:
  """This process's environment with `env` set (a None value unsets that variable) and,
  given `devices`, XLA's host-platform device count (CPU devices, as the tests and the
  devices benchmark use) in place of any count in XLA_FLAGS; its other flags are kept."""
  out = dict(os.environ)
  if devices is not None:
    count = "--xla_force_host_platform_device_count"
    kept = [f for f in out.get("XLA_FLAGS", "").split() if not f.startswith(count + "=")]
    out["XLA_FLAGS"] = " ".join(kept + [f"{count}={devices}"])
  out.update(env)
  return {key: value for key, value in out.items() if value is not None}


def start(code: str | None = None, *, argv=(), devices: int | None = None,
          env: dict | None = None, stdout=subprocess.PIPE,
          stderr=subprocess.PIPE) -> subprocess.Popen:
  """Starts `python -c code` (dedented), or `python *argv`, in the checkout; output
  captured as text unless `stdout`/`stderr` say otherwise."""
  args = ["-c", textwrap.dedent(code)] if code is not None else list(map(str, argv))
  return subprocess.Popen([sys.executable, *args], cwd=REPO,
                          env=environment(devices, **(env or {})), stdout=stdout,
                          stderr=stderr, text=True)


def wait(process: subprocess.Popen, timeout: float | None = None,
         oom_before: int | None = None) -> Finished:
  """Waits for a process from `start` (killing it after `timeout` seconds and raising
  subprocess.TimeoutExpired); returns its output and why it ended."""
  try:
    out, err = process.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    process.kill()
    process.communicate()
    raise
  code = process.returncode
  return Finished(code, out or "", err or "",
                  None if code == 0 else exit_reason(code, oom_before, oom_kills()))


def run(code: str | None = None, *, argv=(), devices: int | None = None,
        env: dict | None = None, timeout: float | None = None) -> Finished:
  """Runs `python -c code` (or `python *argv`) in the checkout to its end; see `start` and
  `wait`."""
  before = oom_kills()
  return wait(start(code, argv=argv, devices=devices, env=env), timeout, before)


def spawn(target, *args, name: str | None = None) -> multiprocessing.Process:
  """Starts `target(*args)` (a module-level function) in a spawned process that dies with
  this one; returns the started process."""
  process = multiprocessing.get_context("spawn").Process(
      target=_die_with_parent_then, args=(os.getpid(), target, args), name=name)
  process.start()
  return process


def _die_with_parent_then(parent: int, target, args) -> None:
  """Linux: the kernel kills this process if its parent dies, even by SIGKILL, so a
  re-launched sweep never finds an orphan still writing the same workdir."""
  try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass
  else:
    if os.getppid() != parent:  # the parent died before prctl took effect
      os._exit(1)
  target(*args)


def exit_reason(code: int, oom_before: int | None, oom_after: int | None,
                what: str = "the process") -> str:
  """Why a process ended: its exit code, or the signal that killed it, and out of memory
  only where the kernel counted an out-of-memory kill meanwhile."""
  if code >= 0:
    return f"{what} exited with code {code}"
  try:
    name = signal.Signals(-code).name
  except ValueError:
    name = f"signal {-code}"
  oom = oom_before is not None and oom_after is not None and oom_after > oom_before
  return (f"{what} was killed by {name}" + (
      f" (out of memory: the kernel's OOM killer killed {oom_after - oom_before} process(es) "
      f"in this cgroup while it ran)" if oom else ""))


def oom_kills() -> int | None:
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
