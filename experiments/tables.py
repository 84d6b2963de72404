"""The one markdown table writer of the sweeps, the benchmarks, the paper tables and memory.

    markdown(["variant", "ms"], [["softmax", number(1.25, ".1f")], ["linear", number(None, ".1f")]])
    | variant | ms |
    |---|---|
    | softmax | 1.2 |
    | linear | — |
"""

from __future__ import annotations

MISSING = "—"  # a value that was not measured (a case that did not run, no paper figure)


def markdown(header, rows) -> str:
  """A markdown table: the header, the separator and one line per row (no final newline).
  Cells are written with str(); an empty cell is written as `| |`."""
  lines = [_line(header), "|" + "---|" * len(header)]
  lines += [_line(row) for row in rows]
  return "\n".join(lines)


def _line(cells) -> str:
  return "|" + "|".join(f" {cell} " if str(cell) else " " for cell in cells) + "|"


def number(value, spec: str = "", unit: str = "") -> str:
  """`value` formatted by `spec` (format()'s mini-language) followed by `unit`, or "—" for
  None."""
  return MISSING if value is None else format(value, spec) + unit
