"""Synthetic seq2seq tasks as TFDS builders, generated locally (array_record, no TensorFlow).

Every task draws sequences of symbols 0..vocab_size-1 with lengths in
[min_length, max_length]; `test_long` draws lengths in (max_length, long_max_length] to
measure length generalisation. Each split has its own seed, so splits are disjoint draws.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2, "test_long": 3}


@dataclasses.dataclass
class GeneratedConfig(tfds.core.BuilderConfig):
  """What every generated task's data depends on (its name must encode all of it)."""
  min_length: int = 4
  max_length: int = 32
  num_train: int = 20_000
  num_eval: int = 1_000
  seed: int = 0


@dataclasses.dataclass
class SyntheticConfig(GeneratedConfig):
  vocab_size: int = 10
  long_max_length: int = 64


def sequence_pair_info(builder) -> tfds.core.DatasetInfo:
  """Features of every generated task: int32 `inputs` and `targets` of any length."""
  sequence = tfds.features.Tensor(shape=(None,), dtype=np.int32)
  return tfds.core.DatasetInfo(builder=builder, description=builder.__doc__,
                               features=tfds.features.FeaturesDict(
                                   {"inputs": sequence, "targets": sequence}))


def config_for(vocab_size, min_length, max_length, long_max_length, num_train, num_eval, seed):
  """A config whose name encodes every parameter, so different data never share files."""
  name = (f"v{vocab_size}_len{min_length}-{max_length}_long{long_max_length}"
          f"_n{num_train}-{num_eval}_seed{seed}")
  return SyntheticConfig(name=name, vocab_size=vocab_size, min_length=min_length,
                         max_length=max_length, long_max_length=long_max_length,
                         num_train=num_train, num_eval=num_eval, seed=seed)


def builder_config(cfg) -> SyntheticConfig:
  """The builder config of a config.data block."""
  return config_for(cfg.vocab_size, cfg.min_length, cfg.max_length, cfg.long_max_length,
                    cfg.num_train, cfg.num_eval, cfg.data_seed)


def lengths(builder_cls, cfg) -> dict:
  """split -> (longest input, longest target + EOS) of a config.data block."""
  short, long = (builder_cls.max_lengths(n) for n in (cfg.max_length, cfg.long_max_length))
  return {**{s: (short[0], short[1] + 1) for s in ("train", "validation", "test")},
          "test_long": (long[0], long[1] + 1)}


def check(cfg) -> None:
  if not 1 <= cfg.min_length <= cfg.max_length < cfg.long_max_length:
    raise ValueError(f"config.data lengths must satisfy 1 <= min_length <= max_length < "
                     f"long_max_length, got {cfg.min_length}, {cfg.max_length}, "
                     f"{cfg.long_max_length}")


class SyntheticTask(tfds.core.GeneratorBasedBuilder):
  """Base: subclasses define `example(rng, length) -> (inputs, targets)` and `vocab_size`."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [config_for(10, 4, 32, 64, 20_000, 1_000, 0)]

  @classmethod
  def vocab_size(cls, config: SyntheticConfig) -> int:
    return config.vocab_size

  @classmethod
  def max_lengths(cls, max_length: int) -> tuple[int, int]:
    """Longest inputs and targets for sequences of at most `max_length` symbols."""
    return max_length, max_length

  def _info(self):
    return sequence_pair_info(self)

  def _split_generators(self, dl_manager):
    c = self.builder_config
    lengths = {"test_long": (c.max_length + 1, c.long_max_length)}
    sizes = {"train": c.num_train}
    return {split: self._generate_examples(split, sizes.get(split, c.num_eval),
                                           *lengths.get(split, (c.min_length, c.max_length)))
            for split in SPLIT_SEEDS}

  def _generate_examples(self, split, count, min_length, max_length):
    rng = np.random.default_rng((self.builder_config.seed, SPLIT_SEEDS[split]))
    for index in range(count):
      inputs, targets = self.example(rng, int(rng.integers(min_length, max_length + 1)))
      yield index, {"inputs": np.asarray(inputs, np.int32),
                    "targets": np.asarray(targets, np.int32)}

  def symbols(self, rng, length):
    return rng.integers(0, self.builder_config.vocab_size, size=length)


class ZooCopy(SyntheticTask):
  """Copy: the target is the input (the sequence-duplication task of Katharopoulos et al.)."""

  def example(self, rng, length):
    x = self.symbols(rng, length)
    return x, x


class ZooReverse(SyntheticTask):
  """Reverse: the target is the input backwards."""

  def example(self, rng, length):
    x = self.symbols(rng, length)
    return x, x[::-1]


class ZooSort(SyntheticTask):
  """Sort: the target is the input in ascending order."""

  def example(self, rng, length):
    x = self.symbols(rng, length)
    return x, np.sort(x)


class ZooAddition(SyntheticTask):
  """Addition: 'a+b' -> the digits of a + b; lengths count each operand's digits.

  Symbols 0-9 are digits and 10 is '+' (vocab_size is fixed at 11).
  """
  PLUS = 10

  @classmethod
  def vocab_size(cls, config):
    return 11

  @classmethod
  def max_lengths(cls, max_length):
    return 2 * max_length + 1, max_length + 1

  def example(self, rng, length):
    a, b = (int("".join(map(str, [rng.integers(1, 10)] + list(rng.integers(0, 10, length - 1)))))
            for _ in range(2))
    digits = lambda n: [int(d) for d in str(n)]
    return digits(a) + [self.PLUS] + digits(b), digits(a + b)
