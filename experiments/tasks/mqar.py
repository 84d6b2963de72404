"""Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology"), generated locally.

The definition of HazyResearch/zoology's `zoology/data/multiquery_ar.py`: a vocabulary of
V tokens; N keys drawn without replacement from [1, V/2) and N values from [V/2, V); the
sequence of length L starts with the N key-value pairs (2N tokens), then the N keys appear
again as queries at even offsets 2g from the end of the pairs, the gaps g drawn without
replacement by the power law p(g) ~ a·g^(a-1) (a = 0.01) over the (L - 2N)/2 slots. The
label of a query position is the value bound to its key (the next token, as a language
model predicts it); every other position is unlabelled (-1). Other positions hold 0, or,
with `random_non_queries` (zoology's default), random tokens.

Splits: `train` and `validation` mix the training (L, N) pairs in equal shares; each test
pair has its own split `test_L{L}_N{N}` (Based's longer test sequences are pairs not seen
in training).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

POWER_A = 0.01


@dataclasses.dataclass
class MQARConfig(tfds.core.BuilderConfig):
  """What the data depends on (the name encodes all of it)."""
  vocab_size: int = 8192
  train_pairs: tuple = ((64, 4), (128, 8), (256, 16), (256, 32), (256, 64))
  test_pairs: tuple = ((64, 4), (128, 8), (256, 16), (512, 64))
  num_train: int = 100_000
  num_eval: int = 3_000
  seed: int = 0
  random_non_queries: bool = False


def config_for(vocab_size, train_pairs, test_pairs, num_train, num_eval, seed,
               random_non_queries=False) -> MQARConfig:
  pairs = lambda ps: "-".join(f"{l}x{n}" for l, n in ps)
  name = (f"v{vocab_size}_train{pairs(train_pairs)}_test{pairs(test_pairs)}"
          f"_n{num_train}-{num_eval}_seed{seed}{'_random' if random_non_queries else ''}")
  return MQARConfig(name=name, vocab_size=vocab_size,
                    train_pairs=tuple(tuple(p) for p in train_pairs),
                    test_pairs=tuple(tuple(p) for p in test_pairs), num_train=num_train,
                    num_eval=num_eval, seed=seed, random_non_queries=random_non_queries)


def check(vocab_size: int, length: int, pairs: int) -> None:
  """Raises ValueError unless (L, N) fits zoology's constraints."""
  if length % 2 or 4 * pairs > length or vocab_size <= length or pairs >= vocab_size // 2:
    raise ValueError(f"MQAR (L, N) = ({length}, {pairs}) with V = {vocab_size}: needs L even, "
                     f"4N <= L (pairs and queries), V > L and N < V/2")


def test_split(length: int, pairs: int) -> str:
  return f"test_L{length}_N{pairs}"


def builder_config(cfg) -> MQARConfig:
  """The builder config of a config.data block."""
  return config_for(cfg.vocab_size, cfg.mqar_train_pairs, cfg.mqar_test_pairs, cfg.num_train,
                    cfg.num_eval, cfg.data_seed, cfg.random_non_queries)


def lengths(cfg) -> dict:
  """split -> (sequence length, 0): one sequence, its own labels."""
  longest = max(length for length, _ in cfg.mqar_train_pairs)
  return {"train": (longest, 0), "validation": (longest, 0),
          **{test_split(*pair): (pair[0], 0) for pair in cfg.mqar_test_pairs}}


def test_splits(cfg) -> tuple[str, ...]:
  """A test split per (L, N) pair, pooled as `test_*`."""
  return tuple(test_split(*pair) for pair in cfg.mqar_test_pairs)


def check_config(cfg) -> None:
  """Every (L, N) pair of a config.data block fits zoology's constraints (`check`)."""
  for field in ("mqar_train_pairs", "mqar_test_pairs"):
    for length, pairs in cfg[field]:
      try:
        check(cfg.vocab_size, length, pairs)
      except ValueError as e:
        raise ValueError(f"config.data.{field}: {e}") from None


def example(rng: np.random.Generator, vocab_size: int, length: int, pairs: int,
            random_non_queries: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """(tokens [L], labels [L]) of one MQAR sequence; labels -1 where there is nothing to recall."""
  keys = rng.choice(np.arange(1, vocab_size // 2), size=pairs, replace=False)
  values = rng.choice(np.arange(vocab_size // 2, vocab_size), size=pairs, replace=False)
  context = 2 * pairs
  space = (length - context) // 2
  p = POWER_A * np.arange(1, space + 1) ** (POWER_A - 1)
  gaps = rng.choice(space, size=pairs, replace=False, p=p / p.sum())
  tokens = np.zeros(length, np.int32)
  tokens[0:context:2], tokens[1:context:2] = keys, values
  tokens[context + 2 * gaps] = keys
  labels = np.full(length, -1, np.int32)
  labels[context + 2 * gaps] = values
  if random_non_queries:
    filler = tokens == 0
    tokens[filler] = rng.integers(0, vocab_size, size=int(filler.sum()))
  return tokens, labels


class ZooMQAR(tfds.core.GeneratorBasedBuilder):
  """MQAR sequences: `inputs` tokens and `labels` (-1: unlabelled), both int32 [L]."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [config_for(8192, MQARConfig.train_pairs, MQARConfig.test_pairs, 100_000,
                                3_000, 0)]

  def _info(self):
    sequence = tfds.features.Tensor(shape=(None,), dtype=np.int32)
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__,
                                 features=tfds.features.FeaturesDict(
                                     {"inputs": sequence, "labels": sequence}))

  def _split_generators(self, dl_manager):
    c = self.builder_config
    for length, pairs in (*c.train_pairs, *c.test_pairs):
      check(c.vocab_size, length, pairs)
    splits = {"train": (c.train_pairs, c.num_train, 0),
              "validation": (c.train_pairs, c.num_eval, 1)}
    for i, (length, pairs) in enumerate(c.test_pairs):
      splits[test_split(length, pairs)] = (((length, pairs),), c.num_eval, 2 + i)
    return {name: self._generate_examples(*spec) for name, spec in splits.items()}

  def _generate_examples(self, pairs, count, split_seed):
    c = self.builder_config
    rng = np.random.default_rng((c.seed, split_seed))
    for index in range(count):
      length, n = pairs[index % len(pairs)]  # equal shares of every (L, N) pair
      tokens, labels = example(rng, c.vocab_size, length, n, c.random_non_queries)
      yield index, {"inputs": tokens, "labels": labels}
