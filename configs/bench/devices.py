"""The training loop over 1, 2, 4 and 8 devices: step time and memory per device.

    python launch.py bench --config configs/bench/devices.py --workdir runs/bench_devices

On CPU the devices are XLA's host-platform devices, which share the machine's cores: the
table shows how memory per device falls as the batch (data) or also the parameters and
optimizer state (fsdp) are split, and what the split costs in time; a speed-up needs
devices with their own compute (GPUs, TPUs). Expected on the 2-core CPU: ~4 minutes.
"""

import ml_collections

from configs import base


def get_config():
  c = ml_collections.ConfigDict()
  c.kind = "devices"
  c.device_counts = (1, 2, 4, 8)
  c.meshes = ("data", "fsdp")    # all devices on mesh.data, or all on mesh.fsdp
  e = base.for_task("copy", max_length=32, long_max_length=64, batch_size=32)
  e.update(dict(num_train_steps=60, log_every=10))
  c.experiment = e               # the run timed in every case (its mesh is set per case)
  return c.lock()
