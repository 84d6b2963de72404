"""A sweep's runs: the product of its axes, each run one experiment config in its own workdir.

An axis is `(name, values)`:
  ("seed", (0, 1, 2))                         a config field and its values, or
  ("variant", {"Performer": {"model.attention": "linear",
                             "model.options.linear.feature_map": "favor"}, ...})
                                              labelled cases, each a dict of field overrides.
A run's workdir is named from its labels, e.g. `attention=linear,seed=1`.
"""

from __future__ import annotations

import dataclasses
import itertools
import re

import ml_collections

from experiments import checks, children, footprint, parallel

# Run in a child process: JAX started here would hold the accelerator (a TPU admits one
# process; a GPU loses most of its memory to the first) that the runs' processes need.
_PROBE = ("import json; import jax; from experiments import footprint; "
          "print(json.dumps([jax.device_count(), footprint.device_memory()]))")


@dataclasses.dataclass(frozen=True)
class Run:
  name: str          # its workdir's basename
  labels: dict       # axis name -> the label of this run's value on that axis
  overrides: dict    # config field path -> value
  config: ml_collections.ConfigDict


def label(value) -> str:
  """A value as it appears in a workdir name: no spaces, slashes or commas."""
  return re.sub(r"[^\w.+-]+", "-", str(value)).strip("-") or "-"


def cases(sweep) -> dict[str, dict[str, dict]]:
  """Each axis as {label (as tables show it): overrides}, in the sweep's order."""
  out = {}
  for axis in sweep.axes:
    if len(axis) != 2 or not isinstance(axis[0], str):
      raise ValueError(f"sweep.axes: each axis is (name, values), got {axis!r}")
    name, values = axis
    if name in out:
      raise ValueError(f"sweep.axes: axis {name!r} appears twice")
    if isinstance(values, dict):
      out[name] = {str(k): dict(v) for k, v in values.items()}
    elif isinstance(values, (tuple, list)):
      out[name] = {str(v): {name: v} for v in values}
    else:
      raise ValueError(f"sweep.axes[{name!r}]: values must be a tuple or a dict of labelled "
                       f"overrides, got {type(values).__name__}")
    if not out[name] or len({label(v) for v in out[name]}) != len(values):
      raise ValueError(f"sweep.axes[{name!r}]: values must be non-empty and distinct as labels, "
                       f"got {list(values)}")
  return out


def short_names(axes) -> dict[str, str]:
  """Each axis's shortest dotted suffix that no other axis shares (for workdir names)."""
  out = {}
  for name in axes:
    parts = name.split(".")
    for k in range(1, len(parts) + 1):
      suffix = ".".join(parts[-k:])
      if all(not other.endswith(suffix) for other in axes if other != name):
        break
    out[name] = suffix
  return out


def expand(sweep) -> list[Run]:
  """Every run of the grid, its config checked, in the grid's order but seed by seed (the
  table's `over` axis); raises ValueError naming the axis and field."""
  axes = cases(sweep)
  short = short_names(axes)
  runs = []
  for combination in itertools.product(*(c.items() for c in axes.values())):
    labels = {axis: lab for axis, (lab, _) in zip(axes, combination)}
    overrides = {}
    for _, fields in combination:
      overrides.update(fields)
    config = sweep.base.copy_and_resolve_references()
    try:
      config.update_from_flattened_dict(overrides)
    except (KeyError, TypeError, AttributeError) as e:
      raise ValueError(f"sweep run {labels}: cannot apply {overrides}: {e}") from None
    config.progress_bar = False  # the sweep shows one progress bar for all its runs
    try:
      checks.check_config(config)
    except ValueError as e:
      raise ValueError(f"sweep run {labels}: {e}") from None
    name = ",".join(f"{short[axis]}={label(lab)}" for axis, lab in labels.items())
    runs.append(Run(name, labels, overrides, config))
  over = sweep.table.over  # every cell's first seed before any cell's second, so that a
  if over in axes:         # sweep cut short (resumed later) has a whole table at one seed
    first = {lab: i for i, lab in enumerate(axes[over])}
    runs.sort(key=lambda run: first[run.labels[over]])  # stable: the grid's order otherwise
  return runs


def check_devices(runs: list[Run]) -> None:
  """What needs the devices, for every run before the first starts: the mesh against the
  device count, batches against the mesh, the model against a device's memory."""
  probe = children.run(_PROBE, timeout=600)
  if probe.reason:
    raise RuntimeError(f"could not list the devices for the sweep's checks ({probe.reason}):\n"
                       f"{probe.stderr[-2000:]}")
  count, memory = probe.last_json()
  for run in runs:
    try:
      shape = parallel.mesh_shape(run.config.mesh, count)
      parallel.check_batches(shape, run.config, processes=1)
      footprint.check_fits(run.config, shape, tuple(memory))
    except ValueError as e:
      raise ValueError(f"sweep run {run.labels}: {e}") from None


def check_layout(sweep) -> None:
  """Every axis is a row, the column, the one aggregated over (seeds) or the one whose best
  value is reported (best_over), exactly once."""
  t = sweep.table
  used = [*t.rows, *([t.columns] if t.columns else []), *([t.over] if t.over else []),
          *([t.best_over] if t.best_over else [])]
  axes = [axis[0] for axis in sweep.axes]
  if sorted(used) != sorted(axes):
    raise ValueError(f"sweep.table: rows {tuple(t.rows)}, columns {t.columns!r}, over "
                     f"{t.over!r} and best_over {t.best_over!r} must name each axis of {axes} "
                     f"exactly once")
  if t.x_axis and t.x_axis != t.columns:
    raise ValueError(f"sweep.table.x_axis={t.x_axis!r} must be the columns axis "
                     f"({t.columns!r}): it is plotted against the rows")
