"""Metrics to `metrics.jsonl` (the source of truth for tables) and TensorBoard event files.

A kill mid-write can leave the file's last line cut short (no newline, not JSON): readers
leave it out, and a resumed run drops it and says so. Any other line that is not a JSON
record with a step is an error naming the file and the line.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys

from experiments import rundir


@contextlib.contextmanager
def _hidden(module: str):
  """`import module` raises ImportError within (unless the process has loaded it already)."""
  if module in sys.modules:
    yield
    return
  sys.modules[module] = None
  try:
    yield
  finally:
    del sys.modules[module]


# tensorboardX imports PyTorch wherever it is installed (to accept torch tensors; this loop
# logs Python numbers): 2 s and 190 MiB of resident memory in every run's process, with
# requirements-bench.txt installed (measured on a Zen 1 EPYC), so it loads with torch hidden.
with _hidden("torch"):
  from tensorboardX import SummaryWriter  # pylint: disable=wrong-import-position

FILE = "metrics.jsonl"


class MetricsWriter:
  """Appends to metrics.jsonl and TensorBoard; with `enabled=False` (every process but the
  first of a multi-host run) it writes nothing."""

  def __init__(self, workdir: str, resumed_step: int, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    self.path = os.path.join(workdir, FILE)
    self._keep_until(workdir, resumed_step)  # later steps are about to be redone
    self.jsonl = open(self.path, "a", encoding="utf-8")
    self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=(
        resumed_step + 1 if resumed_step else None))

  def _keep_until(self, workdir: str, step: int) -> None:
    """Rewrites the file (atomically) with the records up to `step`, none of them final."""
    if not os.path.exists(self.path):
      return
    records, torn = parse(self.path)
    if torn is not None:
      rundir.say(workdir, f"{self.path}: dropped its last line, cut short by a kill "
                          f"mid-write ({torn!r})")
    kept = [r for r in records if r["step"] <= step and not r.get("final")]
    rundir.write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    line = json.dumps(record) + "\n"
    rundir.kill_at("before_metrics_write", step)
    if rundir.crash_point("mid_metrics_write", step):  # the torn line a kill mid-write leaves
      self.jsonl.write(line[:len(line) // 2])
      self.jsonl.flush()
      rundir.kill()
    self.jsonl.write(line)
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


def parse(path: str) -> tuple[list[dict], str | None]:
  """(the records, the torn last line or None); raises ValueError naming the file and line
  for any other line that is not a JSON object with an integer step."""
  with open(path, encoding="utf-8", errors="replace") as f:
    lines = f.read().split("\n")
  last = lines.pop()  # "" when the file ends with its newline
  records = []
  for number, line in enumerate(lines, 1):
    if line.strip():
      records.append(_record(path, number, line))
  if last.strip():
    try:
      records.append(_record(path, len(lines) + 1, last))
    except ValueError:
      return records, last  # cut short by a kill, or still being written
  return records, None


def _record(path: str, number: int, line: str) -> dict:
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} line {number} is not JSON ({e}): {line[:80]!r}; fix or remove "
                     f"that line (only a last line cut short by a kill is dropped)") from None
  if not isinstance(record, dict) or type(record.get("step")) is not int:
    raise ValueError(f"{path} line {number} is not a metrics record with an integer step: "
                     f"{line[:80]!r}")
  return record


def read(workdir: str) -> list[dict]:
  """Every record of the workdir's metrics.jsonl (a torn last line left out); none if the
  run has not logged yet. Raises ValueError naming the file and line of a broken record."""
  path = os.path.join(workdir, FILE)
  if not os.path.exists(path):
    return []
  return parse(path)[0]


def final(records: list[dict]) -> dict | None:
  """The final evaluation's metrics (the last record marked final), or None."""
  last = next((r for r in reversed(records) if r.get("final")), None)
  return None if last is None else {k: v for k, v in last.items() if k not in ("step", "final")}
