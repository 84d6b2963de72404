"""Config checks that run before any data is built or any step is compiled."""

from __future__ import annotations

import os

import attention_zoo
from attention_zoo import decoding
from experiments import tasks

DECAYS = ("cosine", "rsqrt", "step", "constant")
OPTIMIZERS = ("adamw", "radam")


def check_config(config) -> None:
  """Raises ValueError naming the field, the value and the valid choices."""
  data, model = config.data, config.model
  if data.task not in tasks.TASKS:
    raise ValueError(f"config.data.task={data.task!r} is not a task; choose from {tasks.TASKS}")
  roles = {"attention": model.attention, "cross_attention": model.cross_attention}
  for role, name in roles.items():
    if name is None:
      continue
    if name not in attention_zoo.names():
      raise ValueError(f"config.model.{role}={name!r} is not a variant; choose from "
                       f"{attention_zoo.names()}")
    if name not in decoding.DECODERS:
      raise ValueError(f"config.model.{role}={name!r} has no incremental decoding form")
    attention_zoo.get(name, **model.options[name])  # its options: unknown ones raise here
  if data.task == "text" and not data.tfds_name:
    raise ValueError("config.data.task='text' needs config.data.tfds_name (a TFDS text-pair "
                     "dataset, e.g. wmt14_translate/de-en, or zoo_tiny_text_pairs)")
  if data.task == "listops" and not 1 <= data.min_length < data.max_length - 1:
    raise ValueError(f"config.data: ListOps keeps lengths strictly between min_length and "
                     f"max_length, so they need 1 <= min_length < max_length - 1, got "
                     f"{data.min_length}, {data.max_length}")
  if data.task in tasks.SYNTHETIC and not (
      1 <= data.min_length <= data.max_length < data.long_max_length):
    raise ValueError(f"config.data lengths must satisfy 1 <= min_length <= max_length < "
                     f"long_max_length, got {data.min_length}, {data.max_length}, "
                     f"{data.long_max_length}")
  data_dir = os.path.expanduser(data.data_dir)
  parent = data_dir if os.path.exists(data_dir) else os.path.dirname(data_dir.rstrip("/")) or "."
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
    raise ValueError(f"config.data.data_dir={data.data_dir!r}: {parent!r} is not a writable "
                     f"directory")
  for field in ("batch_size", "eval_batch_size"):
    if data[field] <= 0:
      raise ValueError(f"config.data.{field} must be positive, got {data[field]}")
  for field in ("num_train_steps", "log_every", "eval_every", "checkpoint_every",
                "keep_checkpoints", "beam_size"):
    if config[field] <= 0:
      raise ValueError(f"config.{field} must be positive, got {config[field]}")
  if config.optimizer.name not in OPTIMIZERS:
    raise ValueError(f"config.optimizer.name={config.optimizer.name!r}; choose from {OPTIMIZERS}")
  if config.optimizer.decay == "step" and not (
      config.optimizer.warmup_steps <= config.optimizer.drop_at):
    raise ValueError(f"config.optimizer.drop_at={config.optimizer.drop_at} must come after "
                     f"warmup_steps={config.optimizer.warmup_steps}")
  if config.optimizer.decay not in DECAYS:
    raise ValueError(f"config.optimizer.decay={config.optimizer.decay!r}; choose from {DECAYS}")
  if model.d_model % model.num_heads:
    raise ValueError(f"config.model.d_model={model.d_model} is not divisible by "
                     f"num_heads={model.num_heads}")
  if model.num_kv_heads is not None and model.num_heads % model.num_kv_heads:
    raise ValueError(f"config.model.num_heads={model.num_heads} is not a multiple of "
                     f"num_kv_heads={model.num_kv_heads}")
