"""Text-pair (translation) data at the byte level: no vocabulary to download.

Real datasets come from TFDS by name (e.g. `wmt14_translate/de-en`, keys 'de' and 'en'),
downloaded and prepared as array_record where the machine has the internet. The
`zoo_tiny_text_pairs` builder makes a small pair set locally (English -> Pig Latin), so
the same path is tested offline.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

VOCAB_SIZE = 256  # bytes
WORDS = ("the quick brown fox jumps over lazy dog attention is all you need every variant "
         "shares one interface and one loop small models learn copy tasks quickly").split()


def lengths(cfg) -> dict:
  """split -> (bytes per source, bytes per target + EOS); the dataset may lack some split."""
  return {s: (cfg.max_input_length, cfg.max_target_length + 1)
          for s in ("train", "validation", "test")}


def to_symbols(cfg):
  """example -> (source bytes, target bytes), the features config.data names."""
  return lambda e: tuple(np.frombuffer(e[k], np.uint8) for k in (cfg.input_key, cfg.target_key))


def check(cfg) -> None:
  if not cfg.tfds_name:
    raise ValueError("config.data.task='text' needs config.data.tfds_name (a TFDS text-pair "
                     "dataset, e.g. wmt14_translate/de-en, or zoo_tiny_text_pairs)")


def pig_latin(word: str) -> str:
  vowels = "aeiou"
  cut = next((i for i, c in enumerate(word) if c in vowels), len(word))
  return (word + "way") if cut == 0 else word[cut:] + word[:cut] + "ay"


class ZooTinyTextPairs(tfds.core.GeneratorBasedBuilder):
  """English word sequences and their Pig Latin, for testing the text-pair path offline."""

  VERSION = tfds.core.Version("1.0.0")
  SPLITS = {"train": (0, 2000), "validation": (1, 200), "test": (2, 200)}

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__,
                                 features=tfds.features.FeaturesDict(
                                     {"en": tfds.features.Text(), "pig": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(*args) for split, args in self.SPLITS.items()}

  def _generate_examples(self, seed, count):
    rng = np.random.default_rng(seed)
    for index in range(count):
      words = [WORDS[i] for i in rng.integers(0, len(WORDS), rng.integers(1, 5))]
      yield index, {"en": " ".join(words), "pig": " ".join(map(pig_latin, words))}
