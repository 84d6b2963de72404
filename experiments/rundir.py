"""A run directory's guards: one process per workdir, atomic small files, notices, and named
crash points through which the tests kill a run at every instant that matters.

The lock is `fcntl.flock` on `<workdir>/.lock` (`.lock.<i>` for process i > 0 of a
multi-host run, since every process writes checkpoints there): the kernel drops it when
its holder dies, even by SIGKILL, so a killed run never leaves its workdir stuck.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import sys

# The tests' crash hook: AZ_KILL_AT=<point>:<step> SIGKILLs the process at that point.
KILL_AT = "AZ_KILL_AT"


class WorkdirInUse(RuntimeError):
  """Another live process holds the workdir."""


@contextlib.contextmanager
def hold(workdir: str, process_index: int = 0):
  """Holds the workdir for this process, or raises WorkdirInUse naming the holder's pid."""
  path = os.path.join(workdir, ".lock" + (f".{process_index}" if process_index else ""))
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 200).decode(errors="replace").strip() or "an unknown process"
      raise WorkdirInUse(
          f"{workdir} is in use by {holder} (it holds {path}); two processes on one workdir "
          f"would interleave metrics and overwrite each other's checkpoints. Wait for it to "
          f"end or stop it; a dead process holds nothing.") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode())
    yield
  finally:
    os.close(fd)  # releases the lock; the file stays (removing it would race a new holder)


def write_atomic(path: str, text: str) -> None:
  """Writes the whole file or, if killed meanwhile, leaves the old one: never a torn file."""
  partial = f"{path}.partial"
  with open(partial, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(partial, path)


def say(workdir: str, message: str) -> None:
  """A notice about the run directory, on stderr (absl logging is silenced for orbax)."""
  print(f"{os.path.basename(os.path.normpath(workdir))}: {message}", file=sys.stderr, flush=True)


def crash_point(name: str, step: int) -> bool:
  """Whether AZ_KILL_AT names this point and step (tests only; unset, it never matches)."""
  return os.environ.get(KILL_AT) == f"{name}:{step}"


def kill_at(name: str, step: int, settle=None) -> None:
  """SIGKILLs this process if AZ_KILL_AT names this point; `settle` runs first (e.g. to let
  an asynchronous save finish, so the kill falls after it)."""
  if crash_point(name, step):
    if settle is not None:
      settle()
    kill()


def kill() -> None:
  os.kill(os.getpid(), signal.SIGKILL)
