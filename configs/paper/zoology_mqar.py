"""Zoology (Arora et al. 2023), Figure 2: MQAR accuracy against model width, per (L, N).

A 2-layer decoder-only LM (configs/mqar.py) per attention variant and width, the learning
rate swept and the best one reported (as the paper does), 3 seeds. Writes, besides the table
(accuracy per (L, N) test split, mean ± std over seeds, at the best learning rate):
`test_L{L}_N{N}_accuracy_vs_model.d_model.png` (the figure: a line per variant) and
`test_accuracy_vs_state_size.png` (Based's Figure 2 view of the same runs; see
configs/paper/based_mqar.py for its own grid).

    python launch.py sweep --config configs/paper/zoology_mqar.py:reduced \
        --workdir runs/zoology_mqar_reduced     # 2 CPU cores: see REDUCED below
    python launch.py sweep --config configs/paper/zoology_mqar.py --workdir runs/zoology_mqar
                                                # paper scale: a GPU job (not run here)

The paper's figure is a plot without a table: softmax attention is near 1.0 at every width
and (L, N); fixed-state variants fall as L and N grow and need more width to recover.
Compare orderings, not decimals.

Paper scale: V = 8192; training (L, N) = (64, 4), (128, 8), (256, 16), (256, 32), (256, 64);
test (64, 4), (128, 8), (256, 16), (512, 64); widths 64, 128, 256, 512; learning rates
1e-4 ... 1e-2 (4, log-spaced); 100K steps of batch 64. Not run here (no GPU).

QUICK (`:quick`, the one measured here): REDUCED at width 64, one seed, 3,000 steps,
without chunked (softmax computed blockwise, the same function): 8 runs, a first look
in about an hour on 2 cores, far short of the steps softmax needs to reach 0.99.

REDUCED: configs/mqar.py:reduced (V = 256, training (64, 4) and (128, 8), tests (64, 4),
(128, 8) and (128, 16)) at widths 32 and 64, one learning rate (3e-3, the best of 1e-3,
3e-3 and 1e-2 for softmax at 3,000 steps: configs/mqar.py), every registered variant
that decodes (ring excluded: on one device it is softmax) and Performer. What was cut: the
vocabulary (256 for 8192), the lengths (at most 128), the widths, the learning-rate sweep,
the steps, and FAVOR+'s features (64 for 256, see `favor_features`). Measured wall time
and results: see the README.
"""

import attention_zoo
from configs import base
from configs import mqar


def variants(favor_features: int | None = None) -> dict:
  """Every registered variant that decodes, except ring (softmax on one device), and
  Performer (linear with FAVOR+ features: `favor_features` of them, else linear's default)."""
  out = {name: base.attention_fields(name)
         for name in attention_zoo.registry.names(decodes=True, splits_sequences=False)}
  out["linear (favor)"] = {**base.attention_fields("linear"),
                           "model.options.linear.feature_map": "favor"}
  if favor_features is not None:
    out["linear (favor)"]["model.options.linear.num_features"] = favor_features
  return out


def favor_features(scale: str) -> int | None:
  """REDUCED's heads are 16 and 32 wide: 64 features, not linear's default 256. Exact causal
  FAVOR+ costs time linear in the features (linear.py halves each chunk down to single rows),
  and a 256-feature run took 35 minutes, 5x any other variant's; 64 is 3.2x faster in the
  attention. Shared with configs/paper/based_mqar.py, whose seed-0 runs are these."""
  return 64 if scale == "reduced" else None


def get_config(scale: str = "paper", x_metric: str | None = "state_size"):
  if scale not in ("paper", "reduced", "quick"):
    raise ValueError(f"configs/paper/zoology_mqar.py:{scale}: choose paper, reduced or quick")
  c = mqar.get_config("paper" if scale == "paper" else "reduced")
  widths = {"paper": (64, 128, 256, 512), "reduced": (32, 64), "quick": (64,)}[scale]
  rates = (1e-4, 4.6e-4, 2.2e-3, 1e-2) if scale == "paper" else (c.optimizer.learning_rate,)
  seeds = (0,) if scale == "quick" else (0, 1, 2)
  chosen = variants(favor_features(scale))
  if scale != "paper":  # the baselines first, chunked last, when the time runs short
    first = ("softmax", "linear", "gla")
    chunked = chosen.pop("chunked")  # softmax blockwise (tested equal), twice the time
    chosen = {**{k: chosen[k] for k in first}, **chosen}
    if scale == "reduced":
      chosen["chunked"] = chunked
  if scale == "quick":
    c.num_train_steps = 3_000
  splits = [f"test_L{length}_N{pairs}_accuracy" for length, pairs in c.data.mqar_test_pairs]
  return base.sweep(
      c, axes=[("variant", chosen), ("model.d_model", widths),
               ("optimizer.learning_rate", rates), ("seed", seeds)],
      rows=["variant"], columns="model.d_model", best_over="optimizer.learning_rate",
      metrics=("test_accuracy", *splits), curves=("train_loss", "validation_accuracy"),
      x_axis="model.d_model", x_metric=x_metric,
      # seed 0 of REDUCED is also Based's grid (configs/paper/based_mqar.py): whichever
      # sweep trains one of those runs first, the other copies it
      reuse=("runs/based_mqar_reduced",) if scale == "reduced" else ())
