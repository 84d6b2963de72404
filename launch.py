"""attention-zoo's one entry point.

    python launch.py                                   # the default job: configs/sweeps/default.py
    python launch.py --config configs/copy.py --workdir runs/copy --config.model.attention=linear
    python launch.py bench --config configs/bench/attention.py --workdir runs/bench
    python launch.py sweep --config configs/sweeps/variants.py --workdir runs/variants
    python launch.py table --workdir runs/variants        # a sweep's table and plots again

A mistake (a misspelt field, an unknown variant, a missing config file) is one plain line
and exit code 2; Ctrl-C says where the same command resumes (exit code 130).
"""

import os

from absl import app, flags
from ml_collections import config_flags

from configs.sweeps import default
from experiments import console

config_flags.DEFINE_config_file("config", None, "An experiment config, e.g. configs/copy.py.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go; a rerun resumes there.")
FLAGS = flags.FLAGS


def parse(argv):
  """absl's flag parsing, where a missing config file or a misspelt override is one line."""
  path = console.config_path(argv)
  if path is not None and not os.path.isfile(path):
    console.fail(console.missing_config(path))
  try:
    return FLAGS(argv)
  except flags.Error as e:
    console.fail(f"{e} (python launch.py --helpshort lists the flags)")
  except (AttributeError, KeyError, TypeError):  # ml_collections: an override naming no field
    message = console.bad_overrides(argv)
    if message is None:
      raise
    console.fail(message)


def main(argv):
  command = " ".join(argv[1:])
  if command not in ("", "bench", "sweep", "table"):
    console.fail(f"unexpected arguments {command!r}; the commands are bench, sweep and table "
                 f"(python launch.py --help)")
  config, workdir = FLAGS.config, FLAGS.workdir
  if command == "table":
    if not workdir:
      console.fail("table needs --workdir, a sweep's workdir")
  else:
    if config is None and not command:
      command, config, workdir = "sweep", default.get_config(), workdir or default.WORKDIR
    if config is None or not workdir:
      console.fail(f"{command or 'an experiment'} needs --config and --workdir"
                   + ("" if command else " (or neither: the default job)"))
    console.check_workdir(workdir)
  # The training stack (orbax, TFDS, grain, tensorboard: seconds to import) loads once the
  # command line is known to be right, so a mistake in it is reported at once.
  # pylint: disable-next=import-outside-toplevel
  from experiments import benchmark, checkpoints, parallel, sweeps, train
  from experiments.sweeps import report  # pylint: disable=import-outside-toplevel
  console.quiet()
  parallel.initialize_distributed()  # several hosts, when the environment describes them
  commands = {"": train.train_and_evaluate, "bench": benchmark.run, "sweep": sweeps.run,
              "table": lambda _, path: report.write(path)}
  try:
    result = commands[command](config, workdir)
  except console.ConfigError as e:
    console.fail(str(e))
  except KeyboardInterrupt:
    console.fail(console.interrupted(workdir, checkpoints.latest_step(workdir),
                                     sweep=command == "sweep"), code=130)
  if isinstance(result, dict):  # a run's final metrics
    result = "\n".join(f"{k}: {v:.4f}" for k, v in result.items())
  print(result)


if __name__ == "__main__":
  app.run(main, flags_parser=parse)
