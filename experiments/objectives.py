"""What the loop computes for each model shape: logits, and the sums its metrics come from.

Every shape scores some positions of each row (seq2seq: the target tokens and EOS; a
language model: its labelled tokens; a classifier: its one class), so one `sums` serves
all three: loss and correct predictions over the scored positions, and rows all of whose
scored positions are right (teacher-forced, which for greedy decoding is the same thing:
greedy emits the target exactly when every teacher-forced argmax is right).
Packed rows (experiments/data.py) are scored the same way, position by position; exact
and rows then count the examples (segments) of each row, not the rows.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.model import example_index
from experiments.tasks import RESERVED


@dataclasses.dataclass(frozen=True)
class Objective:
  shape: str
  logits: Callable        # (model, batch, rngs) -> logits [B, P, V] (or [B, V])
  scored: Callable        # batch -> (labels [B, P], weights bool [B, P])
  tokens: Callable        # batch -> tokens the model reads (for throughput)
  accuracy: str           # the metric name of correct / scored
  decodes: bool = False   # the final evaluation decodes (seq2seq: greedy or beam search)
  segments: Callable = lambda batch: None  # batch -> segment ids [B, P] of the scored
  #                                          positions in packed rows, else None


def sums(objective: Objective, logits, batch) -> dict:
  """Totals over a batch: loss_sum, correct and count over scored positions; exact and rows
  (examples with something scored: a row, or each segment of a packed row)."""
  labels, weights = objective.scored(batch)
  if logits.ndim == 2:  # one prediction per row
    logits = logits[:, None]
  loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                         jnp.maximum(labels, 0))
  correct = (logits.argmax(-1) == labels) & weights
  B, P = labels.shape
  ids = example_index(objective.segments(batch), (B, P))  # an unpacked row: one example
  per_example = lambda x: jax.ops.segment_sum(x.ravel().astype(jnp.int32), ids, B * (P + 1))
  examples = per_example(weights) > 0
  right = examples & (per_example(weights & ~correct) == 0)
  return dict(loss_sum=jnp.sum(loss * weights), correct=jnp.sum(correct),
              count=jnp.sum(weights), exact=jnp.sum(right), rows=jnp.sum(examples))


def _segments(batch, field):
  """A packed field's (segment ids, positions) for the model, or None (not packed)."""
  if f"{field}_segment_ids" not in batch:
    return None
  return batch[f"{field}_segment_ids"], batch[f"{field}_positions"]


def _seq2seq_scored(batch):
  weights = jnp.arange(batch["targets"].shape[1]) < batch["target_lengths"][:, None]
  return batch["targets"], weights


SEQ2SEQ = Objective(
    "encoder_decoder",
    logits=lambda model, b, rngs: model(b["inputs"], b["input_lengths"], b["decoder_inputs"],
                                        b["target_lengths"], rngs=rngs,
                                        input_segments=_segments(b, "inputs"),
                                        target_segments=_segments(b, "decoder_inputs")),
    scored=_seq2seq_scored, segments=lambda b: b.get("decoder_inputs_segment_ids"),
    tokens=lambda b: int(b["input_lengths"].sum() + b["target_lengths"].sum()),
    accuracy="token_accuracy", decodes=True)

LANGUAGE_MODEL = Objective(
    "decoder",
    logits=lambda model, b, rngs: model.language_model(b["tokens"], b["lengths"], rngs=rngs,
                                                       segments=_segments(b, "tokens")),
    scored=lambda b: (b["labels"], b["labels"] >= 0),
    segments=lambda b: b.get("tokens_segment_ids"),
    tokens=lambda b: int(b["lengths"].sum()), accuracy="accuracy")

def _classifier_scored(batch):
  if "labels" in batch:  # packed: each example's class at its first position
    return batch["labels"], batch["labels"] >= 0
  return batch["label"][:, None], (batch["input_lengths"] > 0)[:, None]


CLASSIFIER = Objective(
    "encoder",
    logits=lambda model, b, rngs: model.classify(b["inputs"], b["input_lengths"], rngs=rngs,
                                                 segments=_segments(b, "inputs")),
    scored=_classifier_scored, segments=lambda b: b.get("inputs_segment_ids"),
    tokens=lambda b: int(np.count_nonzero(np.asarray(b["inputs"]) >= RESERVED)),  # no CLS slots
    accuracy="accuracy")

OBJECTIVES = {o.shape: o for o in (SEQ2SEQ, LANGUAGE_MODEL, CLASSIFIER)}


def metrics(objective: Objective, prefix: str, totals: dict) -> dict:
  """Named metrics from summed totals (`exact` from teacher forcing unless the objective
  decodes; then the caller adds the decoded exact accuracy)."""
  out = {f"{prefix}_loss": totals["loss_sum"] / max(totals["count"], 1),
         f"{prefix}_{objective.accuracy}": totals["correct"] / max(totals["count"], 1)}
  if not objective.decodes:
    out[f"{prefix}_exact_accuracy"] = totals["exact"] / max(totals["rows"], 1)
  return out
