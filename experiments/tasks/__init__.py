"""Tasks by name. Adding a synthetic task: one builder class in synthetic.py, one entry here."""

from experiments.tasks.synthetic import ZooAddition, ZooCopy, ZooReverse, ZooSort
from experiments.tasks.listops import ZooListOps
from experiments.tasks.text_pairs import ZooTinyTextPairs

SYNTHETIC = {"copy": ZooCopy, "reverse": ZooReverse, "sort": ZooSort, "addition": ZooAddition}
# `text`: any TFDS text-pair dataset named by config.data.tfds_name, at the byte level.
# `listops`: LRA's ListOps, generated (experiments/tasks/listops.py).
TASKS = (*SYNTHETIC, "listops", "text")
