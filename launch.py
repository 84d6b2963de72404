"""attention-zoo's one entry point.

    python launch.py                                   # the default job: configs/sweeps/default.py
    python launch.py --config configs/copy.py --workdir runs/copy --config.model.attention=linear
    python launch.py bench --config configs/bench/attention.py --workdir runs/bench
    python launch.py sweep --config configs/sweeps/variants.py --workdir runs/variants
    python launch.py table --workdir runs/variants        # a sweep's table and plots again
"""

from absl import app, flags, logging
import tensorflow_datasets as tfds
from ml_collections import config_flags

from configs.sweeps import default
from experiments import benchmark, parallel, sweeps, train
from experiments.sweeps import report

config_flags.DEFINE_config_file("config", None, "An experiment config, e.g. configs/copy.py.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go; a rerun resumes there.")
FLAGS = flags.FLAGS


def main(argv):
  command = argv[1:]
  if command not in ([], ["bench"], ["sweep"], ["table"]):
    raise app.UsageError(f"unexpected arguments {command}; the commands are bench, sweep, table")
  logging.set_verbosity(logging.ERROR)  # orbax logs every save, TFDS every custom config
  tfds.disable_progress_bar()
  parallel.initialize_distributed()  # several hosts, when the environment describes them
  if command == ["table"]:
    if not FLAGS.workdir:
      raise app.UsageError("table needs --workdir, a sweep's workdir")
    print(report.write(FLAGS.workdir))
    return
  if FLAGS.config is None and not command:
    print(sweeps.run(default.get_config(), default.WORKDIR))
    return
  if FLAGS.config is None or not FLAGS.workdir:
    raise app.UsageError("--config and --workdir are required (or neither: the default job)")
  if command == ["bench"]:
    print(benchmark.run(FLAGS.config, FLAGS.workdir))
    return
  if command == ["sweep"]:
    print(sweeps.run(FLAGS.config, FLAGS.workdir))
    return
  final = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  print("\n".join(f"{k}: {v:.4f}" for k, v in final.items()))


if __name__ == "__main__":
  app.run(main)
