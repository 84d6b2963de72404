"""attention-zoo's one entry point.

    python launch.py                                   # the default job: every variant on copy
    python launch.py --config configs/copy.py --workdir runs/copy --config.model.attention=linear
"""

from absl import app, flags, logging
import tensorflow_datasets as tfds
from ml_collections import config_flags

from experiments import default_job, train

config_flags.DEFINE_config_file("config", None, "An experiment config, e.g. configs/copy.py.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go; a rerun resumes there.")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  logging.set_verbosity(logging.ERROR)  # orbax logs every save, TFDS every custom config
  tfds.disable_progress_bar()
  if FLAGS.config is None:
    print(default_job.run())
    return
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required with --config")
  final = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  print("\n".join(f"{k}: {v:.4f}" for k, v in final.items()))


if __name__ == "__main__":
  app.run(main)
