"""A run directory's guards: one process per workdir, one experiment per workdir (a
re-launch under an edited config is refused), atomic small files, notices, and named crash
points through which the tests kill a run at every instant that matters.

The lock is `fcntl.flock` on `<workdir>/.lock` (`.lock.<i>` for process i > 0 of a
multi-host run, since every process writes checkpoints there): the kernel drops it when
its holder dies, even by SIGKILL, so a killed run never leaves its workdir stuck.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
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


# The fields a re-launched run may change: how it runs, evaluates and reports, never what it
# trains. The mesh (another device count resumes the same run), the kernels' implementation
# and block sizes (exact alternatives), num_train_steps (training on, or a shorter final
# evaluation), the evaluation's settings (a finished run re-evaluated with a beam, say), and
# where the data lies.
MAY_CHANGE = {"num_train_steps", "reevaluate", "progress_bar", "log_every", "eval_every",
              "checkpoint_every", "keep_checkpoints", "eval_batches", "decode_splits",
              "beam_size", "data.data_dir", "data.eval_batch_size"}


def may_change(field: str) -> bool:
  return (field in MAY_CHANGE or field.startswith("mesh.") or field.startswith(
      "model.options.") and field.endswith(("implementation", "chunk_size", "block_size",
                                            "chunk_form")))


def config_changes(workdir: str, config) -> list[str]:
  """How `config` differs from the config.json of the run begun in `workdir`, as
  "field: <there> there, <now> now", in the fields a re-launch may not change; [] if it
  does not, or if nothing was begun there. Fields only one side has are the code's
  evolution (a field added since, with its default), not an edit: not compared."""
  try:
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
      begun = _leaves(json.load(f))
  except (OSError, ValueError):
    return []  # not begun: a run writes its config.json before anything else
  now = _leaves(json.loads(config.to_json_best_effort()))
  return [f"{k}: {begun[k]!r} there, {now[k]!r} now" for k in sorted(begun.keys() & now.keys())
          if begun[k] != now[k] and not may_change(k)]


def _leaves(tree: dict, prefix: str = "") -> dict:
  """{'model.d_model': 64, ...}: a config's leaves by their dotted names."""
  out = {}
  for key, value in tree.items():
    out.update(_leaves(value, f"{prefix}{key}.") if isinstance(value, dict)
               else {prefix + key: value})
  return out


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
