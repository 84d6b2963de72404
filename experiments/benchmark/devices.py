"""Step time and memory per device of the training loop over 1, 2, 4, 8 devices.

Each case is a short run of the real loop (train.train_and_evaluate) in a fresh process
that sees n devices (on CPU, XLA's host-platform device count), read from its
metrics.jsonl: steps/s over the logged intervals after the first, XLA's memory of the
compiled train step per device, and the process's peak resident memory.
"""

from __future__ import annotations

import os
import statistics
import tempfile

from experiments import children, tables

CHILD = """
import json
import ml_collections
from experiments import metrics, train
config = ml_collections.ConfigDict(json.loads({config!r}))
train.train_and_evaluate(config, {workdir!r})
print(json.dumps(metrics.read({workdir!r})))
"""


def case_config(config, devices: int, mesh: str):
  """The experiment of one case: config.experiment with the mesh of `mesh` over `devices`."""
  c = config.experiment.copy_and_resolve_references()
  c.mesh.data, c.mesh.fsdp = (devices, 1) if mesh == "data" else (1, devices)
  c.update(dict(decode_splits=(), progress_bar=False, eval_every=c.num_train_steps,
                checkpoint_every=c.num_train_steps))
  return c


def run_case(config, devices: int, mesh: str, data_dir: str) -> dict:
  c = case_config(config, devices, mesh)
  c.data.data_dir = data_dir
  with tempfile.TemporaryDirectory() as workdir:
    done = children.run(CHILD.format(config=c.to_json(), workdir=workdir), devices=devices)
  if done.reason:
    return dict(devices=devices, mesh=mesh, status=f"failed: {done.stderr.strip()[-300:]}")
  records = done.last_json()
  timed = [r for r in records if "steps_per_second" in r][1:]  # the first holds warm-up
  first = next(r for r in records if "train_step_memory_mib" in r)
  step_ms = statistics.median(1000 / r["steps_per_second"] for r in timed)
  return dict(devices=devices, mesh=f"{mesh}={devices}", status="ok", step_ms=step_ms,
              memory_per_device_mib=first["train_step_memory_mib"],
              process_peak_rss_mib=max(r["process_peak_rss_mib"] for r in timed),
              final_train_loss=timed[-1]["train_loss"])


def run(config):
  data_dir = os.path.abspath(os.path.expanduser(config.experiment.data.data_dir))
  rows = [run_case(config, n, mesh, data_dir) for mesh in config.meshes
          for n in config.device_counts]
  return rows, table(rows)


def table(rows) -> str:
  base = {r["mesh"].split("=")[0]: r for r in rows if r["devices"] == 1 and r["status"] == "ok"}
  body = []
  for r in rows:
    if r["status"] != "ok":
      body.append([r["devices"], r["mesh"], r["status"], *[""] * 5])
      continue
    one = base.get(r["mesh"].split("=")[0])
    ratio = lambda k, one=one, r=r: tables.number(one and r[k] / one[k], ".2f", "x")
    body.append([r["devices"], r["mesh"], f"{r['step_ms']:.1f}", ratio("step_ms"),
                 f"{r['memory_per_device_mib']:.1f}", ratio("memory_per_device_mib"),
                 f"{r['process_peak_rss_mib']:.0f}", f"{r['final_train_loss']:.4f}"])
  return tables.markdown(["devices", "mesh", "step (ms)", "vs 1 device",
                          "XLA memory per device (MiB)", "vs 1 device", "process peak RSS (MiB)",
                          "train loss at the end"], body)
