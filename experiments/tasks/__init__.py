"""Tasks by name. Adding a synthetic task: one builder class in synthetic.py, one entry here."""

from experiments.tasks.synthetic import ZooAddition, ZooCopy, ZooReverse, ZooSort
from experiments.tasks.listops import ZooListOps
from experiments.tasks.text_pairs import ZooTinyTextPairs

SYNTHETIC = {"copy": ZooCopy, "reverse": ZooReverse, "sort": ZooSort, "addition": ZooAddition}
# `text`: any TFDS text-pair dataset named by config.data.tfds_name, at the byte level.
# `listops`: LRA's ListOps, generated (experiments/tasks/listops.py).
# `mqar`: multi-query associative recall, generated (experiments/tasks/mqar.py).
TASKS = (*SYNTHETIC, "listops", "mqar", "text")

# The model shapes (experiments/model.py) each task can train, the one it trains by default
# first: a seq2seq task also trains a decoder-only LM (inputs, BOS, targets), ListOps's
# one-digit answer is a class, MQAR is a language-modelling task only.
SHAPES = {**{name: ("encoder_decoder", "decoder") for name in (*SYNTHETIC, "text")},
          "listops": ("encoder", "encoder_decoder", "decoder"), "mqar": ("decoder",)}


def model_shape(config) -> str:
  """The shape config.model.shape asks for, or else the task's own."""
  return config.model.shape or SHAPES[config.data.task][0]
