"""Training throughput with packed rows against padded ones (experiments/benchmark/packing.py).

    python launch.py bench --config configs/bench/packing.py --workdir runs/bench_packing

The default copy experiment (lengths 4-32, batch 32, a 2+2-layer d=128 Transformer) as
seq2seq and as a language model (`inputs BOS targets`), and ListOps at lengths 50-200 (the
reduced LRA run's) as a classifier: 120 timed steps per case, padded and packed alternating.
Measured on the 2-core CPU (AMD EPYC, shared with a test run): 4 min; packed rows hold 1.62
copy examples each and train 1.56x (seq2seq) and 1.63x (language model) the target tokens
per second of padded ones; ListOps packs 1.46 examples a row, 1.34x the examples per second.
"""

import ml_collections

from configs import base


def get_config():
  c = ml_collections.ConfigDict()
  c.kind = "packing"
  c.shapes = ("encoder_decoder", "decoder", "encoder")
  c.steps = 120                  # timed train steps per case, after 5 untimed ones...
  c.rounds = 6                   # ... alternating between the cases in this many rounds
  c.experiment = base.for_task("copy", min_length=4, max_length=32)  # its model, task, batch
  # The classifier's (encoder) task: ListOps at the reduced LRA lengths, 50-200 tokens.
  c.classifier_experiment = base.for_task("listops", min_length=50, max_length=200,
                                          num_train=2_000, num_eval=100)
  return c.lock()
