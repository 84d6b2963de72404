"""Devices: the mesh, the shardings of the train state and batches, and several hosts.

The mesh has three axes: `data` (the batch is split), `fsdp` (the batch is split and so are
the parameters and optimizer state, FSDP-style) and `sequence` (sequences are split, for
ring attention). Config `mesh.<axis>` gives each size; -1 on one axis takes the devices the
others leave. The default is every device on `data`: plain data parallelism, the state
replicated. Each process feeds its own rows of every global batch.
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from attention_zoo import registry
from experiments import checks

AXES = ("data", "fsdp", "sequence")
BATCH_AXES = ("data", "fsdp")


def initialize_distributed(environ=os.environ) -> bool:
  """Calls jax.distributed.initialize when the environment describes several processes:
  JAX_COORDINATOR_ADDRESS (with JAX_NUM_PROCESSES, JAX_PROCESS_ID), or a Slurm or Open MPI
  job of more than one task (JAX reads those itself). Returns whether it did."""
  if "JAX_COORDINATOR_ADDRESS" in environ:
    missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if k not in environ]
    if missing:
      raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {missing} are not")
    jax.distributed.initialize(environ["JAX_COORDINATOR_ADDRESS"],
                               int(environ["JAX_NUM_PROCESSES"]), int(environ["JAX_PROCESS_ID"]))
    return True
  if int(environ.get("SLURM_NTASKS", 1)) > 1 or int(environ.get("OMPI_COMM_WORLD_SIZE", 1)) > 1:
    jax.distributed.initialize()
    return True
  return False


def mesh_shape(mesh_cfg, device_count: int) -> dict[str, int]:
  """Each axis's size; raises ValueError naming the config fields and the device count."""
  sizes = {axis: mesh_cfg[axis] for axis in AXES}
  given = f"config.mesh = {sizes}"
  if any(s == 0 or s < -1 for s in sizes.values()):
    raise ValueError(f"{given}: each size must be positive, or -1 for the remaining devices")
  free = [axis for axis, s in sizes.items() if s == -1]
  if len(free) > 1:
    raise ValueError(f"{given}: at most one axis may be -1")
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if device_count % fixed:
      raise ValueError(f"{given}: the fixed sizes (product {fixed}) do not divide the "
                       f"{device_count} devices")
    sizes[free[0]] = device_count // fixed
  if math.prod(sizes.values()) != device_count:
    raise ValueError(f"{given}: the sizes multiply to {math.prod(sizes.values())}, but there "
                     f"are {device_count} devices ({jax.devices()[0].platform})")
  return sizes


def make_mesh(mesh_cfg) -> jax.sharding.Mesh:
  sizes = mesh_shape(mesh_cfg, jax.device_count())
  return jax.make_mesh(tuple(sizes.values()), AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def check_batches(shape: dict[str, int], config, processes: int | None = None) -> None:
  """Batch sizes must split evenly over the batch axes and the processes; only ring
  attention can use a `sequence` axis. `shape`: each mesh axis's size (`mesh.shape`, or
  `mesh_shape(...)` where no mesh is made, as in a sweep's up-front checks)."""
  shards = shape["data"] * shape["fsdp"]
  processes = jax.process_count() if processes is None else processes
  for field in ("batch_size", "eval_batch_size"):
    size = config.data[field]
    for parts, what in ((shards, f"the {shards} devices of mesh axes data x fsdp"),
                        (processes, f"the {processes} processes")):
      if size % parts:
        raise ValueError(f"config.data.{field}={size} does not divide evenly over {what}; "
                         f"use a multiple of {parts}")
  sequence = shape["sequence"]
  roles = {name for _, name in checks.attention_roles(config).values()}
  splitters = registry.names(splits_sequences=True)
  if sequence > 1 and not roles & set(splitters):
    raise ValueError(f"config.mesh.sequence={sequence} splits sequences, which only "
                     f"{' or '.join(splitters)} attention does; set config.model.attention "
                     f"to it (roles: {sorted(roles)})")


def split_lengths(lengths: dict, sequence: int) -> dict:
  """The padded lengths rounded up to multiples of the `sequence` axis, so it splits them."""
  up = lambda n: -(-n // sequence) * sequence
  return {split: (up(inputs), up(targets)) for split, (inputs, targets) in lengths.items()}


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def state_shardings(mesh, state):
  """Replicated, except that with fsdp > 1 each array's largest dimension that the fsdp
  axis divides is split over it (parameters and optimizer moments alike)."""
  fsdp = mesh.shape["fsdp"]

  def spec(x):
    shape = np.shape(x)
    if fsdp == 1 or not shape:
      return replicated(mesh)
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
      if shape[dim] % fsdp == 0:
        return NamedSharding(mesh, P(*[None] * dim, "fsdp"))
    return replicated(mesh)

  return jax.tree.map(spec, state)


def to_global(local_batch: dict, sharding) -> dict:
  """One global array per field from each process's rows (one process: a device_put)."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def barrier(name: str) -> None:
  """Every process waits here for the others (nothing to wait for with one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def to_host(x):
  """A global array's full value on every process."""
  if jax.process_count() == 1:
    return jax.device_get(x)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return multihost_utils.process_allgather(x, tiled=True)
