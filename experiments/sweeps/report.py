"""A sweep's table and plots, read from sweep.json and its runs' metrics.jsonl files only.

Runs that differ only on the `over` axis (seeds) are one cell: mean ± sample standard
deviation, with n. A run's figure for a metric is its final record's; a metric the final
record lacks (steps_per_second, train_step_memory_mib) is the mean of the values the run
logged, after the first where there are more (the first interval includes compilation).
The table's optional `headers` ({metric: column title}) and `formats` ({metric: "{:.3f}"})
set how a metric is shown. Written to the sweep's workdir: table.md, table.csv, curves.png
and, when the sweep has an `x_axis`, <metric>_vs_<axis>.png.
"""

from __future__ import annotations

import csv
import json
import os

import matplotlib
matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from experiments import console, metrics, tables  # pylint: disable=wrong-import-position


def load(workdir: str) -> tuple[dict, list[dict]]:
  """(the sweep's table settings, its runs each with labels, final metrics and curves)."""
  path = os.path.join(workdir, "sweep.json")
  if not os.path.isfile(path):
    raise console.ConfigError(f"{workdir} holds no sweep (no sweep.json): table needs a "
                              f"sweep's workdir")
  with open(path, encoding="utf-8") as f:
    sweep = json.load(f)
  runs = []
  for run in sweep["runs"]:
    path = os.path.join(workdir, run["name"])
    try:
      records, error = metrics.read(path), None
    except ValueError as e:  # one run's broken file: that run is out of the table, not all
      records, error = [], str(e)
    runs.append(dict(run, final=metrics.final(records), records=records, unreadable=error,
                     failed=error is not None or os.path.exists(
                         os.path.join(path, "failure.json"))))
  return sweep["table"], runs


def cells(table: dict, runs: list[dict]) -> dict:
  """{(row labels, column label): [runs]}: the runs that differ only on the `over` axis
  (and, with `best_over`, on that axis too: then the runs of its best value)."""
  out = {}
  for run in runs:
    key = (tuple(run["labels"][a] for a in table["rows"]),
           run["labels"][table["columns"]] if table["columns"] else None)
    out.setdefault(key, []).append(run)
  if table.get("best_over"):
    out = {key: best(table, group) for key, group in out.items()}
  return out


def best(table: dict, group: list[dict]) -> list[dict]:
  """The runs of the `best_over` value (a learning rate, say) with the best mean of the first
  metric (lowest for a loss, else highest), as papers report the best of a sweep."""
  by = {}
  for run in group:
    by.setdefault(run["labels"][table["best_over"]], []).append(run)
  metric = table["metrics"][0]
  sign = -1 if metric.endswith("loss") else 1
  score = lambda runs: (-np.inf if summary(runs, metric)["mean"] is None
                        else sign * summary(runs, metric)["mean"])
  return max(by.values(), key=score)


def value(run: dict, metric: str) -> float | None:
  """A finished run's figure for `metric`: its final record's, else the mean of what it
  logged (leaving out the first value where there are more), else None."""
  if not run["final"]:
    return None
  if isinstance(run["final"].get(metric), (int, float)):
    return run["final"][metric]
  logged = [r[metric] for r in run["records"]
            if isinstance(r.get(metric), (int, float)) and not r.get("final")]
  logged = logged[1:] or logged
  return float(np.mean(logged)) if logged else None


def summary(runs: list[dict], metric: str, scale: float = 1.0) -> dict:
  values = [v * scale for v in (value(r, metric) for r in runs) if v is not None]
  return dict(mean=float(np.mean(values)) if values else None,
              std=float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
              n=len(values), of=len(runs), failed=sum(r["failed"] for r in runs))


def _format(s: dict, template: str = "{:.4f}") -> str:
  if s["mean"] is None:
    return "failed" if s["failed"] else "pending"
  text = template.format(s["mean"]) + (f" ± {template.format(s['std'])}" if s["n"] > 1 else "")
  missing = s["of"] - s["n"]
  return text + (f" ({s['n']} of {s['of']}; {s['failed']} failed)" if missing else "")


def _row_name(row: tuple) -> str:
  return " / ".join(row)


def markdown(table: dict, runs: list[dict]) -> str:
  groups = cells(table, runs)
  rows = list(dict.fromkeys(row for row, _ in groups))
  columns = list(dict.fromkeys(column for _, column in groups))
  seeds = max(len(g) for g in groups.values())
  head = " / ".join(table["rows"])
  over = (f"mean ± std over {seeds} {table['over']}s" if table["over"] and seeds > 1
          else "one run each")
  header = lambda metric: (table.get("headers") or {}).get(metric, metric)
  shown = lambda s, metric: _format(s, (table.get("formats") or {}).get(metric, "{:.4f}"))
  parts = []
  if table["columns"]:
    for metric in table["metrics"]:
      parts.append(f"**{header(metric)}** ({over}; columns: {table['columns']})\n")
      parts.append(_markdown([head, *columns], [
          [_row_name(row), *(shown(summary(groups[row, c], metric), metric) for c in columns)]
          for row in rows]))
  else:
    parts.append(f"({over})\n")
    parts.append(_markdown([head, *map(header, table["metrics"])], [
        [_row_name(row), *(shown(summary(groups[row, None], m), m) for m in table["metrics"])]
        for row in rows]))
  if table.get("published"):
    parts.append(published_table(table, groups, rows, columns))
  parts += [f"\nLeft out, its metrics unreadable: {r['name']}: {r['unreadable']}\n"
            for r in runs if r.get("unreadable")]
  return "\n".join(parts)


def published_table(table: dict, groups: dict, rows: list, columns: list) -> str:
  """Ours beside the paper's numbers, in the paper's units (`scale`)."""
  p = table["published"]
  lines = [f"\n**Ours beside {p['source']}** ({p['metric']} × {p['scale']:g})\n"]
  body = []
  for row in rows:
    for column in columns:
      ours = summary(groups[row, column], p["metric"], p["scale"])
      theirs = p["values"].get(_row_name(row))
      body.append([_row_name(row) + (f" ({column})" if column else ""),
                   _format(ours, "{:.2f}"), tables.number(theirs, ".2f")])
  lines.append(_markdown([" / ".join(table["rows"]), "ours", "published"], body))
  return "\n".join(lines)


def _markdown(header: list, body: list) -> str:
  return tables.markdown(header, body) + "\n"  # a blank line before what follows


def write_csv(path: str, table: dict, runs: list[dict]) -> None:
  groups = cells(table, runs)
  with open(path, "w", newline="", encoding="utf-8") as f:
    out = csv.writer(f)
    out.writerow([*table["rows"], table["columns"] or "column", "metric", "mean", "std", "n",
                  "runs", "failed"])
    for (row, column), group in groups.items():
      for metric in table["metrics"]:
        s = summary(group, metric)
        out.writerow([*row, column or "", metric, s["mean"], s["std"], s["n"], s["of"],
                      s["failed"]])


def plot_curves(path: str, table: dict, runs: list[dict]) -> None:
  """One panel per curve metric and column: a line per row, the mean over seeds, the band
  between the lowest and the highest seed shaded (it stays positive on a log scale)."""
  groups = cells(table, runs)
  columns = list(dict.fromkeys(column for _, column in groups))
  rows = list(dict.fromkeys(row for row, _ in groups))
  panels = [(m, c) for m in table["curves"] for c in columns]
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
  for ax, (metric, column) in zip(axes[0], panels):
    for row in rows:
      steps, values = _aligned(groups[row, column], metric)
      if steps is None:
        continue
      ax.plot(steps, values.mean(0), label=_row_name(row))
      ax.fill_between(steps, values.min(0), values.max(0), alpha=0.2)
    ax.set(xlabel="step", ylabel=metric, title=f"{table['columns']}={column}" if column else "")
    if metric.endswith("loss"):
      ax.set_yscale("log")
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _aligned(group: list[dict], metric: str):
  """The steps every run of the group logged `metric` at, and [runs, steps] values."""
  curves = [{r["step"]: r[metric] for r in run["records"]
             if isinstance(r.get(metric), (int, float)) and not r.get("final")} for run in group]
  curves = [c for c in curves if c]
  if not curves:
    return None, None
  steps = sorted(set.intersection(*(set(c) for c in curves)))
  return np.array(steps), np.array([[c[s] for s in steps] for c in curves])


def plot_against_axis(path: str, table: dict, runs: list[dict], metric: str,
                      x_metric: str | None = None) -> None:
  """The final `metric` against the x_axis (e.g. sequence length), a line per row, ± std;
  or, given `x_metric` (e.g. state_size), against that final metric's mean in each cell."""
  groups = cells(table, runs)
  x = lambda column, group: (summary(group, x_metric)["mean"] if x_metric else float(column))
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for row in dict.fromkeys(row for row, _ in groups):
    points = [(x(c, g), summary(g, metric)) for (r, c), g in groups.items() if r == row]
    points = sorted(((x, s) for x, s in points if s["mean"] is not None and x is not None),
                    key=lambda point: point[0])  # cells not run yet have neither
    if points:
      xs = [x for x, _ in points]
      ax.errorbar(xs, [s["mean"] for _, s in points], yerr=[s["std"] for _, s in points],
                  marker="o", capsize=3, label=_row_name(row))
  ax.set(xlabel=x_metric or table["x_axis"], ylabel=metric)
  if x_metric:
    ax.set_xscale("log")
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write(workdir: str) -> str:
  """Writes the table (markdown, CSV) and plots into the sweep's workdir; returns the markdown."""
  table, runs = load(workdir)
  text = markdown(table, runs)
  with open(os.path.join(workdir, "table.md"), "w", encoding="utf-8") as f:
    f.write(text)
  write_csv(os.path.join(workdir, "table.csv"), table, runs)
  if table["curves"]:
    plot_curves(os.path.join(workdir, "curves.png"), table, runs)
  if table["x_axis"]:
    for metric in table["metrics"]:
      plot_against_axis(os.path.join(workdir, f"{metric}_vs_{table['x_axis']}.png"), table,
                        runs, metric)
  if table.get("x_metric"):
    for metric in table["metrics"]:
      plot_against_axis(os.path.join(workdir, f"{metric}_vs_{table['x_metric']}.png"), table,
                        runs, metric, x_metric=table["x_metric"])
  return text
