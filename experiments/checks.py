"""Config checks that run before any data is built or any step is compiled."""

from __future__ import annotations

import os

import attention_zoo
from attention_zoo import registry
from experiments import console, optimizer, tasks
from experiments.model import POOLINGS, POSITIONS

_COUNT = (lambda x: x >= 1, "a positive integer")
_NATURAL = (lambda x: x >= 0, "0 or more")
_FRACTION = (lambda x: 0 <= x < 1, "in [0, 1)")
_RATE = (lambda x: 0 < x < float("inf"), "positive and finite")
# The range of every numeric field (None, where a field allows it, means unset). Not here:
# model.options.* (each variant's checker, through attention_zoo.get) and mesh.* (they need
# the device count: parallel.mesh_shape, which a sweep calls for every run up front).
RANGES = {
    "seed": (lambda x: 0 <= x < 2**31, "in [0, 2**31)"), "data.data_seed": _NATURAL,
    **{f"data.{k}": _COUNT for k in (
        "vocab_size", "min_length", "max_length", "long_max_length", "num_train", "num_eval",
        "max_input_length", "max_target_length", "batch_size", "eval_batch_size")},
    **{f"model.{k}": _COUNT for k in ("d_model", "num_heads", "num_kv_heads", "d_ff",
                                      "max_positions")},
    "model.num_encoder_layers": _NATURAL, "model.num_decoder_layers": _NATURAL,
    "model.dropout_rate": _FRACTION,
    "optimizer.learning_rate": _RATE, "optimizer.warmup_steps": _NATURAL,
    "optimizer.drop_at": _NATURAL, "optimizer.drop_factor": _RATE,
    "optimizer.weight_decay": (lambda x: 0 <= x < float("inf"), "0 or more, finite"),
    "optimizer.b1": _FRACTION, "optimizer.b2": _FRACTION, "optimizer.grad_clip": _RATE,
    **{k: _COUNT for k in ("num_train_steps", "log_every", "eval_every", "eval_batches",
                           "checkpoint_every", "keep_checkpoints", "beam_size")},
}


def check_ranges(config) -> None:
  """Raises ValueError naming the first numeric field out of its range (RANGES)."""
  for field, (ok, what) in RANGES.items():
    value = config
    for part in field.split("."):
      value = value[part]
    if value is not None and not ok(value):
      raise ValueError(f"config.{field}={value!r} is out of range: it must be {what}")


def attention_roles(config) -> dict[str, tuple[str, str]]:
  """role -> (config field, variant) of each attention role of the model's shape (the
  variant under test, `model.attention`, takes every self-attention role it has)."""
  model, shape = config.model, tasks.model_shape(config)
  if shape == "decoder":
    return {"decoder self-attention": ("attention", model.attention)}
  if shape == "encoder":
    return {"encoder self-attention": ("attention", model.attention)}
  return {"decoder self-attention": ("attention", model.attention),
          "encoder self-attention": ("encoder_attention",
                                     model.encoder_attention or model.attention),
          "cross-attention": ("cross_attention", model.cross_attention or model.attention)}


def _keeps_packed_examples_apart(entry, role: str) -> bool:
  """Does the variant take the role's segment ids? A restarting state ("runs") serves
  only causal self-attention (one id array, ids changing where an example starts)."""
  return "segment_ids" not in entry.refuses and (
      entry.segments == "pairs" or role == "decoder self-attention")


def check_attention_roles(config) -> None:
  """Each role's variant exists, can decode (decoder roles), is not causal-only where the
  role is not causal and takes segment ids if rows are packed; read from the variants'
  registry entries. (Their options are checked with every options block, in
  check_option_blocks.)"""
  for role, (field, name) in attention_roles(config).items():
    if name not in attention_zoo.names():
      raise ValueError(f"config.model.{field}={name!r} is not a variant; choose from "
                       f"{attention_zoo.names()}{console.closest(name, attention_zoo.names())}")
    entry = registry.entry(name)
    if role != "encoder self-attention" and entry.decoder is None:
      raise ValueError(f"config.model.{field}={name!r} ({role}) has no incremental decoding "
                       f"form; variants with one: {registry.names(decodes=True)}")
    if (config.model.positions == "alibi" and "self-attention" in role
        and "score_mod" in entry.refuses):
      raise ValueError(f"config.model.{field}={name!r}: alibi positions are a score_mod of "
                       f"self-attention, which {name} refuses; choose positions from "
                       f"{POSITIONS} or a variant that takes score_mod")
    if config.data.packing and not _keeps_packed_examples_apart(entry, role):
      takes = [n for n in attention_zoo.names()
               if _keeps_packed_examples_apart(registry.entry(n), role)]
      raise ValueError(f"config.model.{field}={name!r} cannot take the segment ids that keep "
                       f"the examples of a packed row apart in the {role} "
                       f"(config.data.packing=True); variants that can: {takes}")
    if role != "decoder self-attention" and entry.causal_only:
      raise ValueError(f"config.model.{field}={name!r}: {name} is causal only, so it cannot "
                       f"be the {role}; set config.model.{field} to one of "
                       f"{registry.names(causal_only=False)}")


def check_option_blocks(config) -> None:
  """Every variant's options block, used by a role or not: a bad value is a mistake either
  way (and would surface only when a sweep or a later run selects that variant)."""
  for name in config.model.options:
    try:
      attention_zoo.get(name, **config.model.options[name])  # unknown options, bad values
    except ValueError as e:
      raise ValueError(f"config.model.options.{name}: {e}") from None


def check_config(config) -> None:
  """Raises ValueError naming the field, the value and the valid choices."""
  check_ranges(config)  # first: the checks below divide by some of these
  data, model = config.data, config.model
  task = tasks.entry(data.task)
  if model.shape is not None and model.shape not in task.shapes:
    raise ValueError(f"config.model.shape={model.shape!r}: task {data.task!r} trains the "
                     f"shapes {task.shapes}")
  for field, choices in (("pooling", POOLINGS), ("positions", POSITIONS)):
    if model[field] not in choices:
      raise ValueError(f"config.model.{field}={model[field]!r}; choose from {choices}")
  check_attention_roles(config)
  check_option_blocks(config)
  if model.positions == "learned":
    _, inputs, targets = task.sizes(data)
    longest = inputs + targets + 1 if tasks.model_shape(config) == "decoder" else max(
        inputs, targets) + 1  # + 1: a CLS or BOS position
    if longest > model.max_positions:
      raise ValueError(f"config.model.max_positions={model.max_positions}: learned positions "
                       f"need a row for each of the {longest} positions of the longest "
                       f"sequence (every split, test_long included)")
  task.check(data)
  data_dir = os.path.expanduser(data.data_dir)
  parent = data_dir if os.path.exists(data_dir) else os.path.dirname(data_dir.rstrip("/")) or "."
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
    raise ValueError(f"config.data.data_dir={data.data_dir!r}: {parent!r} is not a writable "
                     f"directory")
  optimizer.check(config.optimizer)
  if model.positions == "sinusoidal" and model.d_model % 2:
    raise ValueError(f"config.model.d_model={model.d_model} must be even: sinusoidal positions "
                     f"pair its dimensions")
  if model.d_model % model.num_heads:
    raise ValueError(f"config.model.d_model={model.d_model} is not divisible by "
                     f"num_heads={model.num_heads}")
  if model.num_kv_heads is not None and model.num_heads % model.num_kv_heads:
    raise ValueError(f"config.model.num_heads={model.num_heads} is not a multiple of "
                     f"num_kv_heads={model.num_kv_heads}")
