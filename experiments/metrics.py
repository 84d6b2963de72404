"""Metrics to `metrics.jsonl` (the source of truth for tables) and TensorBoard event files."""

from __future__ import annotations

import json
import math
import os

from tensorboardX import SummaryWriter


class MetricsWriter:
  """Appends to metrics.jsonl and TensorBoard; with `enabled=False` (every process but the
  first of a multi-host run) it writes nothing."""

  def __init__(self, workdir: str, resumed_step: int, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._drop_after(resumed_step)  # steps after the checkpoint are about to be redone
    self.jsonl = open(self.path, "a", encoding="utf-8")
    self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=(
        resumed_step + 1 if resumed_step else None))

  def _drop_after(self, step: int) -> None:
    if not os.path.exists(self.path):
      return
    with open(self.path, encoding="utf-8") as f:
      kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(self.path, "w", encoding="utf-8") as f:
      f.writelines(kept)

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    self.jsonl.write(json.dumps(record) + "\n")
    self.jsonl.flush()
    for name, value in record.items():
      if name != "step" and isinstance(value, (int, float)):
        self.tensorboard.add_scalar(name, value, step)
    self.tensorboard.flush()

  def close(self) -> None:
    if not self.enabled:
      return
    self.jsonl.close()
    self.tensorboard.close()


def _plain(value):
  value = value.item() if hasattr(value, "item") else value
  return value if not isinstance(value, float) or math.isfinite(value) else str(value)


def read(workdir: str) -> list[dict]:
  """Every record of the workdir's metrics.jsonl; none if the run has not logged yet."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def final(records: list[dict]) -> dict | None:
  """The final evaluation's metrics (the last record marked final), or None."""
  last = next((r for r in reversed(records) if r.get("final")), None)
  return None if last is None else {k: v for k, v in last.items() if k not in ("step", "final")}
