"""Orbax checkpoints of the train state and the data iterator, resumed from the workdir.

`checkpoints/` keeps the latest `keep` (saved every `every` steps, asynchronously: a
kill mid-save leaves the previous one intact); `best/` keeps the one with the lowest
validation loss.
"""

from __future__ import annotations

import os

import grain
import orbax.checkpoint as ocp


class Checkpoints:

  def __init__(self, workdir: str, every: int, keep: int):
    self.every = every
    # Both managers may save the same step; on several hosts their barriers need distinct
    # names (orbax keys them by step), or the second collides with the first.
    processes = lambda name: ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)
    self.latest = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             multiprocessing_options=processes("latest")))
    self.best = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "best"),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m["eval_loss"],
                                             best_mode="min", create=True,
                                             multiprocessing_options=processes("best")))

  def restore(self, state, data_iterator):
    """(state, step) of the latest checkpoint, the data iterator moved to match; or (state, 0)."""
    step = self.latest.latest_step()
    if step is None:
      return state, 0
    restored = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(state),
        data=grain.checkpoint.CheckpointRestore(data_iterator)))
    return restored["state"], step

  def save(self, step: int, state, data_iterator, last: bool = False) -> None:
    """Saves on every `every`-th step and on the last (orbax would also save the first)."""
    if step % self.every and not last:
      return
    self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)),
                     force=True)

  def save_best(self, step: int, state, metrics: dict) -> None:
    self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                   metrics=metrics, force=True)

  def close(self) -> None:
    for manager in (self.latest, self.best):
      manager.wait_until_finished()
      manager.close()
