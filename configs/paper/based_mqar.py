"""Based (Arora et al. 2024, "Simple linear attention language models balance the
recall-throughput tradeoff"), Figure 2: MQAR accuracy against the recurrent state size.

One point per (variant, width): the 2-layer decoder-only LM of configs/mqar.py, its state
size (`state_size` in final_metrics.json: the floats of every layer's decoding state for
the longest sequence, from the variant's own decoding cache: 2·L·d per layer for a
key/value cache, 2·(w+1)·d for a window of w, K·F·(H+1) for linear attention, N·H·H for
the gated and delta-rule recurrences) against its test accuracy. Sliding-window attention
spends its state budget on the window, so it appears once per window. Writes
`test_accuracy_vs_state_size.png` and the table (accuracy per (L, N) split).

    python launch.py sweep --config configs/paper/based_mqar.py:reduced \
        --workdir runs/based_mqar_reduced       # 2 CPU cores
    python launch.py sweep --config configs/paper/based_mqar.py --workdir runs/based_mqar

The paper's figure: attention is near 1.0 at the largest state; fixed-state variants trade
state for recall, the delta-rule and gated variants reaching high recall at far smaller
states than a key/value cache. Compare orderings, not decimals.

Paper scale: configs/mqar.py (V = 8192, L up to 512), widths 64-512, windows 16-128.
REDUCED: configs/mqar.py:reduced at widths 32 and 64, windows 8 and 32, one seed per point
(the zoology sweep has the seeds). Every point but the windows is a seed-0 run of the
zoology sweep (configs/paper/zoology_mqar.py) at the same scale: the finished ones are
copied from its workdir (`runs/zoology_mqar_reduced`, as the README runs it;
`--config.reuse=...` names another), not trained again; the zoology sweep copies back
from this workdir the ones trained here first.
"""

from configs import base
from configs import mqar
from configs.paper import zoology_mqar


def get_config(scale: str = "paper"):
  if scale not in ("paper", "reduced"):
    raise ValueError(f"configs/paper/based_mqar.py:{scale}: choose paper or reduced")
  c = mqar.get_config(scale)
  widths = (64, 128, 256, 512) if scale == "paper" else (32, 64)
  windows = (16, 32, 64, 128) if scale == "paper" else (8, 32)
  variants = {k: v for k, v in zoology_mqar.variants(zoology_mqar.favor_features(scale)).items()
              if k != "local"}
  for w in windows:
    variants[f"local (window {w})"] = {**base.attention_fields("local"),
                                       "model.options.local.local_window_size": w}
  if scale == "reduced":  # softmax blockwise (tested equal to it): last, when time runs short
    variants["chunked"] = variants.pop("chunked")
  splits = [f"test_L{length}_N{pairs}_accuracy" for length, pairs in c.data.mqar_test_pairs]
  return base.sweep(
      c, axes=[("variant", variants), ("model.d_model", widths), ("seed", (0,))],
      rows=["variant"], columns="model.d_model", metrics=("test_accuracy", *splits),
      curves=("train_loss",), x_metric="state_size",
      reuse=("runs/zoology_mqar_reduced",) if scale == "reduced" else ())  # paper scale: the
  #       zoology sweep's learning rates differ from this one's, so no run is the same
