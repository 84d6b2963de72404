"""The loop over several CPU devices: data-parallel equals one device; checkpoints move
between device counts; ring attention trains on sequences split over devices."""

import json
import os
import socket

import pytest

from experiments import metrics
from tests import devices

TRAIN = """
import json
from experiments import train
from tests import tiny
config = tiny.config({variant!r}, {data_dir!r}, **{overrides!r})
train.train_and_evaluate(config, {workdir!r})
print(json.dumps("done"))
"""
# A constant rate after warmup, so a run resumed partway follows the 6-step run. The curves
# are what is compared: no decoding at the end (6 s of compiling a run on 8 devices), except
# where two processes decode together; evaluated and saved at the last step only (mid-run,
# an evaluation and its two saves took ~3 s of a 12 s run on 8 devices).
BASE = {"num_train_steps": 6, "log_every": 1, "eval_every": 6, "checkpoint_every": 6,
        "optimizer.decay": "constant", "optimizer.warmup_steps": 2, "decode_splits": ()}


def _train(n_devices, workdir, data_dir, variant="softmax", **overrides):
  devices.run(n_devices, TRAIN.format(variant=variant, data_dir=str(data_dir),
                                      workdir=str(workdir), overrides={**BASE, **overrides}))
  return {r["step"]: r["train_loss"] for r in metrics.read(str(workdir)) if "train_loss" in r}


def _assert_same_curve(a, b):
  assert sorted(a) == sorted(b) == list(range(1, 7))
  for step in a:
    assert a[step] == pytest.approx(b[step], rel=2e-6, abs=1e-6), (step, a[step], b[step])


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
  root = tmp_path_factory.mktemp("parallel")
  return root, _train(1, root / "one", root / "tfds")


@pytest.mark.slow
def test_data_parallel_and_fsdp_over_8_devices_equal_one_device(one_device):
  """mesh data=2 x fsdp=4: the batch split over all 8 devices, the parameters and optimizer
  state over 4 of them (pure data parallelism is this with fsdp=1)."""
  root, reference = one_device
  _assert_same_curve(_train(8, root / "fsdp", root / "tfds", **{"mesh.fsdp": 4}), reference)
  with open(root / "fsdp" / "metrics.jsonl") as f:
    first = json.loads(f.readline())
  assert first["devices"] == 8


@pytest.mark.slow
def test_checkpoint_resumes_on_another_device_count(one_device):
  """8 devices to step 2, then 1 device to step 4, then 8 to the end: the one-device curve."""
  root, reference = one_device
  workdir = root / "8to1to8"
  for n_devices, steps in ((8, 2), (1, 4), (8, 6)):  # each saves its last step
    curve = _train(n_devices, workdir, root / "tfds", num_train_steps=steps)
    assert max(int(step) for step in os.listdir(workdir / "checkpoints")) == steps
  _assert_same_curve(curve, reference)


@pytest.mark.slow
def test_ring_attention_trains_on_sequences_split_over_devices(tmp_path):
  """Sequences split over 4 devices (x 2 on data) give the one-device curve of ring."""
  split = _train(8, tmp_path / "split", tmp_path / "tfds", "ring",
                 **{"mesh.sequence": 4, "mesh.data": 2})
  whole = _train(1, tmp_path / "whole", tmp_path / "tfds", "ring")
  _assert_same_curve(split, whole)


BAD_MESHES = """
import json
from experiments import train
from tests import tiny
messages = []
for overrides in ({{"mesh.fsdp": 3}}, {{"data.batch_size": 12}}, {{"mesh.sequence": 2}},
                  {{"mesh.data": 4, "mesh.fsdp": 4}}):
  try:
    train.train_and_evaluate(tiny.config("softmax", {data_dir!r}, **overrides), {workdir!r})
    messages.append(None)
  except ValueError as e:
    messages.append(str(e))
print(json.dumps(messages))
"""


def test_bad_meshes_fail_with_a_clear_message(tmp_path):
  messages = devices.run(8, BAD_MESHES.format(data_dir=str(tmp_path / "tfds"),
                                              workdir=str(tmp_path / "run")))
  assert "do not divide the 8 devices" in messages[0]
  assert ("config.data.batch_size=12 does not divide evenly over the 8 devices of mesh axes "
          "data x fsdp; use a multiple of 8") in messages[1]
  assert "config.mesh.sequence=2 splits sequences, which only ring attention does" in messages[2]
  assert "the sizes multiply to 16, but there are 8 devices" in messages[3]


TWO_PROCESSES = """
import json
from experiments import parallel, train
from tests import tiny
assert parallel.initialize_distributed()
final = train.train_and_evaluate(tiny.config("softmax", {data_dir!r}, **{overrides!r}),
                                 {workdir!r})
print(json.dumps(final))
"""


@pytest.mark.slow
def test_two_processes_train_together(tmp_path):
  """Two processes of 2 CPU devices each (jax.distributed over localhost, as on two hosts):
  one run, each process feeding its own rows; both end with the same metrics."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  code = TWO_PROCESSES.format(data_dir=str(tmp_path / "tfds"), workdir=str(tmp_path / "run"),
                              overrides={**BASE, "eval_every": 3, "checkpoint_every": 3,
                                         "decode_splits": ("test",)})
  processes = [devices.start(2, code, JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                             JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)) for i in range(2)]
  finals = [devices.result(p) for p in processes]
  assert finals[0] == finals[1] and "test_exact_accuracy" in finals[0]
  logged = metrics.read(str(tmp_path / "run"))
  assert [r["step"] for r in logged if "train_loss" in r] == list(range(1, 7))  # written once
  assert logged[0]["devices"] == 4
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["3", "6"]
