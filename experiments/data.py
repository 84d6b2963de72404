"""One input pipeline for every task: TFDS array_record sources fed through grain.

Token ids: 0 padding, 1 begin-of-sequence, 2 end-of-sequence, task symbols from 3 on.
Every batch is padded to the config's lengths (one shape, one compilation); its fields
follow the model's shape (experiments/model.py):
  encoder_decoder: inputs [B, S], input_lengths [B], decoder_inputs [B, T] (BOS + target),
                   targets [B, T] (target + EOS), target_lengths [B] (with EOS);
  decoder:         tokens [B, L], lengths [B], labels [B, L] (the next token where it is
                   scored, else -1); a seq2seq example is `inputs BOS targets`, labelled on
                   the targets and EOS; an LM task (MQAR) brings its own labels;
  encoder:         inputs [B, S], input_lengths [B], label [B] (the one target symbol).
"""

from __future__ import annotations

import dataclasses
import functools
import os

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds

from experiments import parallel, tasks
from experiments.tasks import listops, mqar, synthetic, text_pairs

PAD, BOS, EOS = 0, 1, 2
RESERVED = 3


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  vocab_size: int                    # of the model, with the reserved ids
  sources: dict                      # split -> random-access data source
  lengths: dict                      # split -> (max input length, max target length + EOS)
  to_symbols: object                 # example -> (input symbols, target symbols or labels)
  labelled: bool = False             # examples carry per-token labels (an LM task: MQAR)
  num_classes: int | None = None     # a one-symbol target read as a class (classifier)
  test_splits: tuple = ("test",)     # the splits whose metrics are averaged as `test_*`


def load_task(cfg) -> Task:
  """Builds the task's data (once, into cfg.data_dir) and opens its splits."""
  data_dir = os.path.expanduser(cfg.data_dir)
  if cfg.task in tasks.SYNTHETIC:
    builder_cls = tasks.SYNTHETIC[cfg.task]
    builder = _prepare(builder_cls, synthetic.config_for(
        cfg.vocab_size, cfg.min_length, cfg.max_length, cfg.long_max_length, cfg.num_train,
        cfg.num_eval, cfg.data_seed), data_dir)
    short, long = builder_cls.max_lengths(cfg.max_length), builder_cls.max_lengths(
        cfg.long_max_length)
    lengths = {s: (short[0], short[1] + 1) for s in ("train", "validation", "test")}
    lengths["test_long"] = (long[0], long[1] + 1)
    vocab = builder_cls.vocab_size(builder.builder_config)
    to_symbols = _generated_pair
  elif cfg.task == "listops":
    builder = _prepare(listops.ZooListOps, listops.config_for(
        cfg.min_length, cfg.max_length, cfg.num_train, cfg.num_eval, cfg.data_seed), data_dir)
    lengths = {s: (cfg.max_length, 2) for s in ("train", "validation", "test")}
    vocab = listops.ZooListOps.VOCAB_SIZE
    sources = {split: builder.as_data_source(split=split) for split in lengths}
    return Task(cfg.task, vocab + RESERVED, sources, lengths, _generated_pair,
                num_classes=listops.NUM_CLASSES)
  elif cfg.task == "mqar":
    builder = _prepare(mqar.ZooMQAR, mqar.config_for(
        cfg.vocab_size, cfg.mqar_train_pairs, cfg.mqar_test_pairs, cfg.num_train, cfg.num_eval,
        cfg.data_seed, cfg.random_non_queries), data_dir)
    longest = max(length for length, _ in cfg.mqar_train_pairs)
    tests = tuple(mqar.test_split(*pair) for pair in cfg.mqar_test_pairs)
    lengths = {"train": (longest, 0), "validation": (longest, 0),
               **{split: (length, 0) for split, (length, _) in zip(tests, cfg.mqar_test_pairs)}}
    sources = {split: builder.as_data_source(split=split) for split in lengths}
    return Task(cfg.task, cfg.vocab_size + RESERVED, sources, lengths,
                lambda e: (e["inputs"], e["labels"]), labelled=True, test_splits=tests)
  else:  # text pairs, byte level
    # the splits are known once the data is prepared
    builder = _prepare(functools.partial(tfds.builder, cfg.tfds_name), None, data_dir)
    lengths = {s: (cfg.max_input_length, cfg.max_target_length + 1)
               for s in builder.info.splits if s in ("train", "validation", "test")}
    vocab = text_pairs.VOCAB_SIZE
    to_symbols = lambda e: tuple(np.frombuffer(e[k], np.uint8) for k in
                                 (cfg.input_key, cfg.target_key))
  sources = {split: builder.as_data_source(split=split) for split in lengths}
  return Task(cfg.task, vocab + RESERVED, sources, lengths, to_symbols)


def _generated_pair(example):
  """(inputs, targets) of a generated task's example (synthetic.sequence_pair_info)."""
  return example["inputs"], example["targets"]


def _prepare(make_builder, config, data_dir: str):
  """The builder with its data prepared. With several processes the first prepares it while
  the others wait, then open what it wrote (concurrent writers would collide)."""
  if config is not None and config.name in make_builder.builder_configs:
    config = config.name  # TFDS refuses a custom config named like a predefined one
  make = lambda: make_builder(**({} if config is None else {"config": config}),
                              data_dir=data_dir, file_format="array_record")
  if jax.process_index() == 0:
    make().download_and_prepare()
  parallel.barrier("data prepared")
  return make()


def encode(task: Task, example, split: str, shape: str, truncate: bool = False) -> dict:
  """One example -> padded arrays for a model of `shape`; too long raises unless `truncate`
  (then it is cut)."""
  max_in, max_out = task.lengths[split]
  inputs, targets = (np.asarray(x, np.int32) for x in task.to_symbols(example))
  inputs = inputs + RESERVED
  if task.labelled:  # an LM task: its own labels (-1: not scored), one length
    labels = np.where(targets >= 0, targets + RESERVED, -1).astype(np.int32)
    _check_length(task, split, len(inputs), max_in, truncate)
    inputs, labels = inputs[:max_in], labels[:max_in]
    return dict(tokens=_pad(inputs, max_in), lengths=np.int32(len(inputs)),
                labels=_pad(labels, max_in, -1))
  targets = targets + RESERVED
  if truncate:
    inputs, targets = inputs[:max_in], targets[:max_out - 1]
  elif len(inputs) > max_in or len(targets) + 1 > max_out:
    raise ValueError(f"{task.name}/{split}: example of input length {len(inputs)} and target "
                     f"length {len(targets)} exceeds the padded lengths ({max_in}, {max_out - 1}); "
                     f"raise them or set config.data.truncate")
  if shape == "encoder":
    return dict(inputs=_pad(inputs, max_in), input_lengths=np.int32(len(inputs)),
                label=np.int32(targets[0] - RESERVED))
  if shape == "decoder":
    tokens = np.concatenate([inputs, [BOS], targets])
    labels = np.concatenate([np.full(len(inputs), -1), targets, [EOS]]).astype(np.int32)
    return dict(tokens=_pad(tokens, max_in + max_out), lengths=np.int32(len(tokens)),
                labels=_pad(labels, max_in + max_out, -1))
  return dict(inputs=_pad(inputs, max_in), input_lengths=np.int32(len(inputs)),
              decoder_inputs=_pad(np.concatenate([[BOS], targets]), max_out)[:max_out],
              targets=_pad(np.concatenate([targets, [EOS]]), max_out),
              target_lengths=np.int32(len(targets) + 1))


def _pad(x, n, value=PAD):
  return np.pad(np.asarray(x, np.int32), (0, n - len(x)), constant_values=value)


def _check_length(task, split, length, limit, truncate):
  if length > limit and not truncate:
    raise ValueError(f"{task.name}/{split}: example of length {length} exceeds the padded "
                     f"length {limit}; raise it or set config.data.truncate")


def train_dataset(task: Task, cfg, shape: str, seed: int, process: int = 0,
                  processes: int = 1) -> grain.IterDataset:
  """Shuffled anew each epoch from `seed`, endless, in batches; its iterator is checkpointable.

  With several processes each reads its own shard of the examples (every `processes`-th,
  from `process`) in batches of batch_size / processes: its rows of the global batch.
  """
  encoded = lambda e: encode(task, e, "train", shape, cfg.truncate)
  return (grain.MapDataset.source(task.sources["train"])[process::processes]
          .shuffle(seed=seed).repeat().map(encoded)
          .batch(cfg.batch_size // processes, drop_remainder=True).to_iter_dataset())


def eval_batches(task: Task, cfg, shape: str, split: str, max_batches: int | None = None):
  """The split in order, in full batches: the last is padded with empty rows (length 0,
  labels -1)."""
  ds = grain.MapDataset.source(task.sources[split]).map(
      lambda e: encode(task, e, split, shape, cfg.truncate)).batch(cfg.eval_batch_size)
  for i in range(len(ds) if max_batches is None else min(max_batches, len(ds))):
    batch = ds[i]
    missing = cfg.eval_batch_size - len(next(iter(batch.values())))
    yield {k: np.pad(v, [(0, missing)] + [(0, 0)] * (v.ndim - 1),
                     constant_values=-1 if k == "labels" else 0) for k, v in batch.items()}
