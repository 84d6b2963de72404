"""What a person at the terminal sees: plain one-line mistakes, quiet libraries, sparse bars.

- `closest` / `choose`: a name looked up in a table of choices, the valid ones and the
  closest match in the error (difflib).
- `quiet()`: the libraries' noise filtered at its source, once per process (launch.py and
  every sweep run's process call it): TFDS's progress bars and its "Using custom data
  configuration" warnings (absl's logger), orbax's logging of every save and its sharding
  metadata warning (the root logger), INFO lines (JAX's probing of back ends). TFDS's
  "Downloading and preparing dataset" lines are printed, not logged: `data.py` replaces
  them with one line of its own.
- `progress(...)`: a tqdm bar that redraws twice a second on a terminal and every
  `FILE_INTERVAL` seconds when written to a file (a sweep run's log.txt), not a line each time.
- `fail(message)`: the message on stderr and exit 2, no traceback (launch.py's mistakes).
- `bad_override` / `missing_config`: the sentences for a misspelt field and a missing file.
"""

from __future__ import annotations

import contextlib
import difflib
import glob
import importlib.util
import logging
import os
import sys
from typing import Iterable, Mapping

FILE_INTERVAL = 60.0  # seconds between redraws of a bar written to a file


def closest(name, choices: Iterable[str]) -> str:
  """' (did you mean 'x'?)' for the choice closest to `name`, or '' if none is close."""
  close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
  return f" (did you mean {close[0]!r}?)" if close else ""


def choose(table: Mapping[str, object], name: str, what: str):
  """table[name], or ValueError naming `what`, the valid names and the closest one."""
  if name in table:
    return table[name]
  raise ValueError(f"{what}={name!r}; choose from {tuple(table)}{closest(name, table)}")


class _DropOrbaxSharding(logging.Filter):
  """orbax's sharding metadata warns on the root logger for every array whose sharding it
  cannot describe ("Conversion for <type> has not been implemented"); the save is fine."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.name == "root" and str(record.msg).startswith("Conversion for ")
                and "has not been implemented" in str(record.msg))


def quiet() -> None:
  """Filters the libraries' noise (see the module docstring); repeated calls are harmless."""
  logging.getLogger("absl").setLevel(logging.ERROR)  # TFDS's custom configs, orbax's saves
  root = logging.getLogger()
  if root.level < logging.WARNING:  # absl's app.run sets INFO: JAX's probing of back ends
    root.setLevel(logging.WARNING)
  if not any(isinstance(f, _DropOrbaxSharding) for f in root.filters):
    root.addFilter(_DropOrbaxSharding())
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel; heavy
  tfds.disable_progress_bar()


def progress(**kwargs):
  """A tqdm bar (kwargs as tqdm's) that redraws sparsely unless stderr is a terminal."""
  import tqdm  # pylint: disable=import-outside-toplevel
  interactive = sys.stderr.isatty()
  return tqdm.tqdm(**{"dynamic_ncols": True, "mininterval": 0.5 if interactive else FILE_INTERVAL,
                      "maxinterval": 10.0 if interactive else FILE_INTERVAL, **kwargs})


def fail(message: str, code: int = 2):
  """Prints `message` on stderr and exits with `code`; never returns."""
  print(message, file=sys.stderr, flush=True)
  sys.exit(code)


def bad_override(config, dotted: str) -> str | None:
  """The sentence for `--config.<dotted>=...` naming no field of `config` (the valid
  fields where it went wrong and the closest), or None if the field exists."""
  node, done = config, "config"
  for part in dotted.split("."):
    keys = list(node.keys()) if hasattr(node, "keys") else []
    if part not in keys:
      if not keys:
        return f"{done} is a value, not a group of fields: --config.{dotted} cannot be set"
      return (f"--config.{dotted}: {done} has no field {part!r}{closest(part, keys)}; its "
              f"fields: {', '.join(sorted(map(str, keys)))}")
    node, done = node[part], f"{done}.{part}"
  return None


def config_path(argv) -> str | None:
  """The --config file named in `argv` (without a `:argument` suffix), or None."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1].split(":")[0]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1].split(":")[0]
  return None


def bad_overrides(argv) -> str | None:
  """After a failed parse: the sentence for the first `--config.<field>=` override of `argv`
  naming no field of its config file (`bad_override`), or None if every field exists."""
  path = config_path(argv)
  if path is None:
    return None
  spec = importlib.util.spec_from_file_location("config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  fields = (a[len("--config."):].split("=")[0] for a in argv if a.startswith("--config."))
  return next(filter(None, (bad_override(config, f) for f in fields)), None)


def missing_config(path: str) -> str:
  """The sentence for a --config file that does not exist, with the closest config file."""
  configs = sorted(glob.glob(os.path.join("configs", "**", "*.py"), recursive=True))
  configs = [c for c in configs if not c.endswith("__init__.py")]
  return (f"--config {path}: no such file{closest(path, configs)}; the configs are "
          f"configs/<task>.py, configs/sweeps/*.py, configs/bench/*.py and configs/paper/*.py")


def check_workdir(workdir: str) -> None:
  """Exits with a plain line unless `workdir` is, or can become, a writable directory."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    fail(f"--workdir {workdir} is a file, not a directory; choose a directory (a new path "
         f"or a run's workdir, which resumes)")
  parent = os.path.abspath(workdir)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
    fail(f"--workdir {workdir}: {parent} is not a writable directory")


class ConfigError(ValueError):
  """A mistake in the config or the command line, found before anything ran: launch.py
  prints it as one line, no traceback."""


@contextlib.contextmanager
def config_mistakes():
  """Turns a ValueError raised inside (a config check's) into a ConfigError."""
  try:
    yield
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(str(e)) from e


def interrupted(workdir: str, step: int | None, sweep: bool = False) -> str:
  """The line printed on Ctrl-C: where the same command resumes."""
  if sweep:
    return (f"Interrupted. The same command resumes the sweep in {workdir}: finished runs are "
            f"kept, the others resume from their latest checkpoints.")
  return (f"Interrupted. The same command resumes {workdir} from step {step or 0} "
          + ("(its latest checkpoint)." if step else "(no checkpoint was saved yet)."))
