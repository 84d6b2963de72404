"""One input pipeline for every task: TFDS array_record sources fed through grain.

Token ids: 0 padding, 1 begin-of-sequence, 2 end-of-sequence, task symbols from 3 on
(experiments/tasks); what each task is, how it is built and how long its splits are is on
its entry there, so nothing here depends on the task.
Every batch is padded to the config's lengths (one shape, one compilation); its fields
follow the model's shape (experiments/model.py):
  encoder_decoder: inputs [B, S], input_lengths [B], decoder_inputs [B, T] (BOS + target),
                   targets [B, T] (target + EOS), target_lengths [B] (with EOS);
  decoder:         tokens [B, L], lengths [B], labels [B, L] (the next token where it is
                   scored, else -1); a seq2seq example is `inputs BOS targets`, labelled on
                   the targets and EOS; an LM task (MQAR) brings its own labels;
  encoder:         inputs [B, S], input_lengths [B], label [B] (the one target symbol).
Training batches packed (`config.data.packing`) hold several examples per row: the lengths
are then each row's filled length, and the fields the model reads (tokens; inputs and
decoder_inputs) come with `<field>_segment_ids` (1, 2, ... per example, 0 on the padding)
and `<field>_positions` (from 0 in each example). A packed classifier row has `labels`
[B, S] in place of `label`: each example's class at its first position, -1 elsewhere;
with CLS pooling that position is a slot (BOS) before the example, for the CLS vector,
and the rows are one longer than the unpacked inputs' padded length.
Evaluation is never packed: decoding and exact-sequence accuracy take an example per row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import sys

import grain
import jax
import numpy as np

from experiments import parallel, tasks
from experiments.tasks import BOS, EOS, PAD, RESERVED


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where this process's data goes: its rows of every global batch (each process reads
  the `process`-th of `processes` equal parts) and the multiple every padded length is
  rounded up to (the mesh's `sequence` axis splits sequences into that many parts)."""
  process: int = 0
  processes: int = 1
  length_multiple: int = 1

  @classmethod
  def of(cls, mesh) -> Placement:
    """This process's placement on `mesh`."""
    return cls(jax.process_index(), jax.process_count(), mesh.shape["sequence"])

  def rows(self, batch: dict) -> dict:
    """This process's rows of a global batch."""
    if self.processes == 1:
      return batch
    return {k: np.split(v, self.processes)[self.process] for k, v in batch.items()}


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
  placement: Placement = Placement()  # this process's rows and the lengths' multiple


def load_task(cfg, placement: Placement = Placement()) -> Task:
  """Builds the task's data (once, into cfg.data_dir) and opens its splits, padded to
  multiples of `placement.length_multiple`; its batches are `placement`'s rows."""
  entry = tasks.entry(cfg.task)
  builder = _prepare(*entry.builder(cfg), os.path.expanduser(cfg.data_dir))
  lengths = {split: lengths for split, lengths in entry.lengths(cfg).items()
             if split in builder.info.splits}  # a TFDS dataset may lack a split
  sources = {split: builder.as_data_source(split=split) for split in lengths}
  return Task(cfg.task, entry.vocab_size(cfg) + RESERVED, sources,
              parallel.split_lengths(lengths, placement.length_multiple), entry.to_symbols(cfg),
              labelled=entry.labelled, num_classes=entry.num_classes,
              test_splits=entry.test_splits(cfg), placement=placement)


def _prepare(make_builder, config, data_dir: str):
  """The builder with its data prepared. With several processes the first prepares it while
  the others wait, then open what it wrote (concurrent writers would collide)."""
  if config is not None and config.name in make_builder.builder_configs:
    config = config.name  # TFDS refuses a custom config named like a predefined one
  make = lambda: make_builder(**({} if config is None else {"config": config}),
                              data_dir=data_dir, file_format="array_record")
  if jax.process_index() == 0:
    builder = make()
    if not os.path.exists(os.path.join(builder.data_dir, "dataset_info.json")):
      print(f"preparing the data (once) in {builder.data_dir}", file=sys.stderr, flush=True)
    with contextlib.redirect_stdout(io.StringIO()):  # TFDS prints "Downloading and preparing
      builder.download_and_prepare()  # dataset Unknown size ..." for data made here
  parallel.barrier("data prepared")
  return make()


def encode(task: Task, example, split: str, shape: str, truncate: bool = False) -> dict:
  """One example -> padded arrays for a model of `shape`; too long raises unless `truncate`
  (then it is cut)."""
  fields = _fields(task, example, split, shape, truncate)
  padded = {}
  for name, (n, value, lengths) in _layout(task, split, shape).items():
    sequence = fields.pop(name)
    padded[name] = _pad(sequence, n, value)
    if lengths:
      padded[lengths] = np.int32(len(sequence))
  return {**padded, **fields}  # what is left: a classifier's label


def _layout(task: Task, split: str, shape: str) -> dict:
  """The sequence fields of `shape`'s batches: name -> (padded length, padding value, the
  name of its lengths, or None where another field's lengths serve)."""
  max_in, max_out = task.lengths[split]
  if shape == "decoder":
    n = max_in if task.labelled else max_in + max_out
    return dict(tokens=(n, PAD, "lengths"), labels=(n, -1, None))
  if shape == "encoder":
    return dict(inputs=(max_in, PAD, "input_lengths"))
  return dict(inputs=(max_in, PAD, "input_lengths"),
              decoder_inputs=(max_out, PAD, "target_lengths"), targets=(max_out, PAD, None))


def _fields(task: Task, example, split: str, shape: str, truncate: bool) -> dict:
  """One example's unpadded sequences (and a classifier's label), checked against or cut
  to the split's lengths."""
  max_in, max_out = task.lengths[split]
  inputs, targets = (np.asarray(x, np.int32) for x in task.to_symbols(example))
  inputs = inputs + RESERVED
  if task.labelled:  # an LM task: its own labels (-1: not scored), one length
    labels = np.where(targets >= 0, targets + RESERVED, -1).astype(np.int32)
    _check_length(task, split, len(inputs), max_in, truncate)
    return dict(tokens=inputs[:max_in], labels=labels[:max_in])
  targets = targets + RESERVED
  if truncate:
    inputs, targets = inputs[:max_in], targets[:max_out - 1]
  elif len(inputs) > max_in or len(targets) + 1 > max_out:
    raise ValueError(f"{task.name}/{split}: example of input length {len(inputs)} and target "
                     f"length {len(targets)} exceeds the padded lengths ({max_in}, {max_out - 1}); "
                     f"raise them or set config.data.truncate")
  if shape == "encoder":
    return dict(inputs=inputs, label=np.int32(targets[0] - RESERVED))
  if shape == "decoder":
    return dict(tokens=np.concatenate([inputs, [BOS], targets]).astype(np.int32),
                labels=np.concatenate([np.full(len(inputs), -1), targets, [EOS]]).astype(np.int32))
  return dict(inputs=inputs, decoder_inputs=np.concatenate([[BOS], targets]).astype(np.int32),
              targets=np.concatenate([targets, [EOS]]).astype(np.int32))


def _pad(x, n, value=PAD):
  return np.pad(np.asarray(x, np.int32), (0, n - len(x)), constant_values=value)


def _check_length(task, split, length, limit, truncate):
  if length > limit and not truncate:
    raise ValueError(f"{task.name}/{split}: example of length {length} exceeds the padded "
                     f"length {limit}; raise it or set config.data.truncate")


def train_dataset(task: Task, cfg, shape: str, seed: int,
                  pooling: str | None = None) -> grain.IterDataset:
  """Shuffled anew each epoch from `seed`, endless, in batches; its iterator is checkpointable.

  Each process reads its own shard of the examples (every `processes`-th, from `process`:
  task.placement) in batches of batch_size / processes: its rows of the global batch.
  With `cfg.packing`, each row holds as many examples as fit (see `_pack`); a classifier
  (`shape` encoder) packs a slot for the CLS vector before each example if `pooling` is cls.
  """
  process, processes = task.placement.process, task.placement.processes
  rows = cfg.batch_size // processes
  examples = (grain.MapDataset.source(task.sources["train"])[process::processes]
              .shuffle(seed=seed).repeat())
  if cfg.packing:
    if shape == "encoder" and pooling not in ("cls", "mean"):
      raise ValueError(f"train_dataset: packing the classifier needs its pooling ('cls' leaves "
                       f"each example a slot for the CLS vector, 'mean' none), got {pooling!r}")
    slot = shape == "encoder" and pooling == "cls"
    packed = _pack(examples.map(lambda e: _packable(_fields(task, e, "train", shape,
                                                            cfg.truncate), slot)),
                   _packed_layout(task, shape, slot), rows, seed).batch(rows, drop_remainder=True)
    # Made ahead in a thread while the step runs, as grain's reader threads read padded
    # batches ahead (seq2seq packed over padded target tokens/s: 1.46x without, 1.60x with).
    return grain.experimental.ThreadPrefetchIterDataset(packed, prefetch_buffer_size=2)
  return (examples.map(lambda e: encode(task, e, "train", shape, cfg.truncate))
          .batch(rows, drop_remainder=True).to_iter_dataset())


def _packable(fields: dict, slot: bool) -> dict:
  """An example as packing takes it: a classifier's label becomes `labels`, its class at
  the example's first position (after a BOS `slot` for the CLS vector, if asked)."""
  if "label" not in fields:
    return fields
  inputs = fields["inputs"]
  if slot:
    inputs = np.concatenate([[BOS], inputs]).astype(np.int32)
  labels = np.full(len(inputs), -1, np.int32)
  labels[0] = fields["label"]
  return dict(inputs=inputs, labels=labels)


def _packed_layout(task: Task, shape: str, slot: bool) -> dict:
  """_layout of packed training rows: a classifier's rows carry `labels` (one longer with
  the CLS slot, so that the longest example fits as it does unpacked)."""
  layout = _layout(task, "train", shape)
  if shape != "encoder":
    return layout
  n = layout["inputs"][0] + slot
  return dict(inputs=(n, PAD, "input_lengths"), labels=(n, -1, None))


def _pack(examples: grain.MapDataset, layout: dict, rows: int, seed: int) -> grain.IterDataset:
  """Unpadded examples packed into rows of the padded lengths, by grain's best-fit packing.

  Grain numbers a row's examples 1, 2, ... in `<field>_segment_ids` (0 on the padding after
  them) and restarts `<field>_positions` at 0 for each; an example's fields share its id, so
  the decoder's ids and the encoder's pair up for cross-attention. Examples fill each row
  from its start, so the filled length serves as the row's lengths, as for one example:
  attention drops the padding by lengths (the block-skipping variants skip it) and segment
  ids keep the examples apart. A field scored alongside another (labels, targets) keeps no
  ids of its own. More bins than rows pack tighter (copy, lengths 4-32, decoder rows, batch
  32: 88% full with one bin per row, 91% with four; unpacked 57%).
  """
  # Read without grain's prefetch threads: packing draws examples one by one, and the
  # prefetcher's bookkeeping per element (it scans its 500-element buffer) doubled the
  # pipeline's time; reading a local array_record example is quick.
  examples = examples.to_iter_dataset(grain.ReadOptions(num_threads=0))
  packed = grain.experimental.BestFitPackIterDataset(
      examples, length_struct={k: n for k, (n, _, _) in layout.items()},
      padding_struct={k: value for k, (_, value, _) in layout.items()},
      num_packing_bins=4 * rows, seed=seed)

  def row(packed_row):
    out = {}
    for name, (_, _, lengths) in layout.items():
      out[name] = packed_row[name]
      if lengths:
        ids = packed_row[f"{name}_segment_ids"]
        out.update({lengths: np.int32(np.count_nonzero(ids)), f"{name}_segment_ids": ids,
                    f"{name}_positions": packed_row[f"{name}_positions"]})
    return out

  return packed.map(row)


def eval_batches(task: Task, cfg, shape: str, split: str, max_batches: int | None = None):
  """The split in order, in full global batches of which this process gets its rows
  (task.placement); the last is padded with empty rows (length 0, labels -1)."""
  ds = grain.MapDataset.source(task.sources[split]).map(
      lambda e: encode(task, e, split, shape, cfg.truncate)).batch(cfg.eval_batch_size)
  for i in range(len(ds) if max_batches is None else min(max_batches, len(ds))):
    batch = ds[i]
    missing = cfg.eval_batch_size - len(next(iter(batch.values())))
    yield task.placement.rows({
        k: np.pad(v, [(0, missing)] + [(0, 0)] * (v.ndim - 1),
                  constant_values=-1 if k == "labels" else 0) for k, v in batch.items()})
