"""Orbax checkpoints of the train state and the data iterator, resumed from the workdir.

`checkpoints/` keeps the latest `keep` (saved every `every` steps, asynchronously: a
kill mid-save leaves the previous one intact, and orbax removes the unfinished one);
`best/` keeps the one with the lowest validation loss.

Resuming after a kill at any instant: best checkpoints after the resumed step (saved just
before a kill that took the latest save with it) are removed, since the run redoes them, and
so are best checkpoints a kill left half deleted; a checkpoint orbax cannot read (corrupted,
partly deleted) is moved aside to `checkpoints.unreadable/` with a notice, and the newest
readable one is used instead.
"""

from __future__ import annotations

import os

import grain
import jax
import orbax.checkpoint as ocp

from experiments import parallel, rundir


def latest_step(workdir: str) -> int | None:
  """The step of the newest finished checkpoint in `workdir` (orbax names a finished one by
  its step; one being written carries a suffix), or None if there is none."""
  try:
    names = os.listdir(os.path.join(workdir, "checkpoints"))
  except OSError:
    return None
  return max((int(n) for n in names if n.isdigit()), default=None)


class Checkpoints:

  def __init__(self, workdir: str, every: int, keep: int):
    self.workdir, self.every = workdir, every
    # Both managers may save the same step; on several hosts their barriers need distinct
    # names (orbax keys them by step), or the second collides with the first.
    processes = lambda name: ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)
    self.latest = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             cleanup_tmp_directories=True,
                                             multiprocessing_options=processes("latest")))
    self.best = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "best"),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m["eval_loss"],
                                             best_mode="min", create=True,
                                             cleanup_tmp_directories=True,
                                             multiprocessing_options=processes("best")))

  def restore(self, state, data_iterator):
    """(state, step) of the newest readable checkpoint, the data iterator moved to match;
    or (state, 0) if there is none. Raises RuntimeError naming each checkpoint if there are
    some and none is readable."""
    errors = []
    for step in sorted(self.latest.all_steps(), reverse=True):
      try:
        restored = self.latest.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(state),
            data=grain.checkpoint.CheckpointRestore(data_iterator)))
      except Exception as e:  # pylint: disable=broad-except; storage errors have many types
        errors.append((step, e))
        continue
      for bad, error in errors:
        rundir.say(self.workdir, f"checkpoint {bad} is unreadable ({_brief(error)}); moved to "
                                 f"{self._set_aside(bad)}")
      if errors:
        rundir.say(self.workdir, f"resuming from step {step}, the newest readable checkpoint")
      self._tidy_best(step)
      return restored["state"], step
    if errors:
      raise RuntimeError("no checkpoint can be read, so the run cannot resume (delete "
                         f"{self.latest.directory} to start again from step 0):\n" + "\n".join(
                             f"  {self.latest.directory / str(s)}: {_brief(e)}"
                             for s, e in errors))
    self._tidy_best(0)
    return state, 0

  def _set_aside(self, step: int) -> str:
    """Moves an unreadable step out of orbax's directory (kept for inspection), so that the
    resumed run can save that step again."""
    aside = os.path.join(self.workdir, "checkpoints.unreadable")
    target = os.path.join(aside, f"{step}")
    if jax.process_index() == 0:
      os.makedirs(aside, exist_ok=True)
      suffix = 0
      while os.path.exists(target):
        suffix += 1
        target = os.path.join(aside, f"{step}.{suffix}")
      os.replace(str(self.latest.directory / str(step)), target)
    parallel.barrier(f"checkpoint {step} set aside")
    self.latest.reload()
    return target

  def _tidy_best(self, step: int) -> None:
    """Removes best checkpoints after the resumed step (saved before a kill that took the
    latest save with it: the run saves them again) and any without metrics (left by a kill
    mid-deletion: orbax could neither rank nor ever remove it)."""
    for saved in self.best.all_steps():
      if saved > step or _metrics(self.best, saved) is None:
        self.best.delete(saved)

  def save(self, step: int, state, data_iterator, last: bool = False) -> None:
    """Saves on every `every`-th step and on the last (orbax would also save the first)."""
    if step % self.every and not last:
      return
    self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)),
                     force=True)
    rundir.kill_at("mid_latest_save", step)  # asynchronous: still being written

  def save_best(self, step: int, state, metrics: dict) -> None:
    rundir.kill_at("before_best_save", step)
    self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                   metrics=metrics, force=True)
    rundir.kill_at("mid_best_save", step)
    rundir.kill_at("after_best_save", step, settle=self.best.wait_until_finished)

  def wait(self) -> None:
    """Until every save so far is on disk (orbax saves asynchronously)."""
    for manager in (self.latest, self.best):
      manager.wait_until_finished()

  def close(self) -> None:
    for manager in (self.latest, self.best):
      manager.wait_until_finished()
      manager.close()


def _metrics(manager, step: int):
  try:
    return manager.metrics(step)
  except Exception:  # pylint: disable=broad-except; a half-deleted step fails many ways
    return None


def _brief(error: Exception) -> str:
  """The error's type and first line (storage tracebacks run to pages)."""
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0] if text else ''}".strip()[:300]
