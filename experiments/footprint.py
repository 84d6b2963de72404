"""Will the model fit? A simple estimate of a train step's memory per device, checked before
any data is built, so a model too big for the machine is refused at once, with the numbers.

Per device, in float32 (4 bytes a number), with B the train batch, D = d_model, F = d_ff,
and each stack of blocks over its longest padded sequence (test splits included: decoding
uses them; a decoder-only model reads inputs and targets as one sequence):
  parameters x 4: the parameters, their gradients and Adam's two moments (split over fsdp;
    the attention's q, k, v, o projections only: a variant's extra projections are left out);
  activations: B x (layers x length, summed over the stacks) x (12 D + 2 F) numbers kept for
    the backward pass (each block's projections, norms, residuals and feed-forward), and
    the output logits B x length x vocabulary three times (logits, softmax, gradient);
  attention logits of a dense variant (softmax): B x N x T x S once, the largest role's,
    with B the larger of the train and eval batches (the probabilities each layer keeps for
    the backward pass are left out).
The batch is split over the data x fsdp devices and the length over `sequence`. The estimate
errs low: it refuses what cannot fit, not everything that will not (XLA's own temporaries
come on top), and it accepts every config in configs/ on a 24 GiB device.
"""

from __future__ import annotations

import math

import psutil

from experiments import tasks

BYTES = 4  # float32 parameters, activations and optimizer state
# Variants that materialise the [B, N, T, S] logits (the others work in blocks or features).
DENSE = ("softmax",)
GIB = 2**30


def _stacks(config, source: int, target: int) -> list[tuple[int, int, str, int, str | None]]:
  """The model's stacks of blocks: (layers, length, self-attention variant, length its
  cross-attention reads (0: none), cross-attention variant), by the model's shape."""
  m, shape = config.model, tasks.model_shape(config)
  encoder = m.encoder_attention or m.attention
  if shape == "decoder":  # inputs, BOS, targets as one sequence
    return [(m.num_decoder_layers, source + target, m.attention, 0, None)]
  if shape == "encoder":  # a CLS token before the inputs
    return [(m.num_encoder_layers, source + 1, encoder, 0, None)]
  return [(m.num_encoder_layers, source, encoder, 0, None),
          (m.num_decoder_layers, target, m.attention, source, m.cross_attention or m.attention)]


def parameters(config) -> int:
  """The model's parameters (experiments/model.py: tied embeddings, attention without bias),
  without a variant's extra projections or a classifier's head."""
  m = config.model
  vocab, source, target = tasks.entry(config.data.task).sizes(config.data)
  d, kv = m.d_model, (m.num_kv_heads or m.num_heads) * (m.d_model // m.num_heads)
  attention = 2 * d * d + 2 * d * kv
  block = attention + 2 * d * m.d_ff + d + m.d_ff + 2 * (2 * d)  # + feed-forward, 2 norms
  total = vocab * d
  for layers, _, _, cross, _ in _stacks(config, source, target):
    total += layers * (block + (attention + 2 * d if cross else 0)) + 2 * d  # + final norm
  return total


def estimate(config, shape: dict[str, int]) -> dict[str, float]:
  """Bytes per device of each part (see the module docstring) and their `total`."""
  m, (vocab, source, target) = config.model, tasks.entry(config.data.task).sizes(config.data)
  per_device = lambda b: math.ceil(b / (shape["data"] * shape["fsdp"]))
  split = lambda n: math.ceil(n / shape["sequence"])
  stacks = _stacks(config, source, target)
  tokens = sum(layers * split(length) for layers, length, *_ in stacks)
  output = 0 if tasks.model_shape(config) == "encoder" else split(stacks[-1][1]) * vocab
  parts = dict(parameters=BYTES * parameters(config) / shape["fsdp"])
  parts["optimizer"] = 3 * parts["parameters"]  # gradients and Adam's two moments
  parts["activations"] = BYTES * per_device(config.data.batch_size) * (
      tokens * (12 * m.d_model + 2 * m.d_ff) + 3 * output)
  dense = [split(length) ** 2 for _, length, name, _, _ in stacks if name in DENSE]
  dense += [split(length) * split(cross) for _, length, _, cross, name in stacks
            if cross and name in DENSE]
  parts["attention_logits"] = BYTES * m.num_heads * max(dense, default=0) * per_device(
      max(config.data.batch_size, config.data.eval_batch_size))
  parts["total"] = sum(parts.values())
  return parts


def device_memory() -> tuple[float | None, str]:
  """(bytes one device may use, what that is): a GPU's or TPU's memory limit, or on CPU this
  machine's available RAM shared by its CPU devices; None where it cannot be told."""
  import jax  # pylint: disable=import-outside-toplevel
  device = jax.local_devices()[0]
  if device.platform == "cpu":
    available = psutil.virtual_memory().available
    share = jax.local_device_count()
    return available / share, (f"this machine's available RAM ({available / GIB:.1f} GiB"
                               + (f" shared by {share} CPU devices)" if share > 1 else ")"))
  limit = (device.memory_stats() or {}).get("bytes_limit")
  return limit, f"a {device.device_kind} ({limit / GIB:.1f} GiB)" if limit else "unknown"


def check_fits(config, shape: dict[str, int], memory: tuple[float | None, str] = None) -> None:
  """Raises ValueError with the numbers if the estimate exceeds a device's memory (`memory`:
  device_memory()'s answer, asked here if not given)."""
  parts = estimate(config, shape)
  limit, what = device_memory() if memory is None else memory
  if not limit or parts["total"] <= limit:
    return
  details = ", ".join(f"{k.replace('_', ' ')} {v / GIB:.2f}" for k, v in parts.items()
                      if k != "total")
  raise ValueError(
      f"the model does not fit: a train step needs at least ~{parts['total'] / GIB:.1f} GiB "
      f"per device ({details} GiB; {parameters(config):,} parameters, mesh {shape}), but "
      f"{what} allows {limit / GIB:.1f} GiB per device. Reduce config.model (d_model, d_ff, "
      f"layers), config.data.batch_size or the lengths, or use more devices "
      f"(experiments/footprint.py explains the estimate)")
