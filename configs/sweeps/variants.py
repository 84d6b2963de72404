"""Every variant on the copy task, three seeds each: which attention learns it, at what cost.

    python launch.py sweep --config configs/sweeps/variants.py --workdir runs/variants
    python launch.py sweep --config configs/sweeps/variants.py --workdir runs/variants_reverse \
        --config.base.data.task=reverse

A causal-only variant (retention, gla, deltanet, gated_deltanet) is the decoder's
self-attention, with softmax in the encoder and cross-attention (configs.base.attention_fields);
the others take every role. Ring attention is left out: on one device it is softmax.

Expected on the 2-core CPU: about an hour, estimated from single runs (24 runs of 2,000
steps, 2+2 layers, d=128; configs/copy.py takes 121 s with softmax), not timed as a whole.
"""

import attention_zoo
from configs import base


def get_config():
  variants = {name: base.attention_fields(name)
              for name in attention_zoo.registry.names(splits_sequences=False)}
  return base.sweep(base.for_task("copy"), axes=[("variant", variants), ("seed", (0, 1, 2))],
                    rows=["variant"],
                    metrics=("test_exact_accuracy", "test_long_exact_accuracy", "test_loss"),
                    curves=("train_loss", "validation_loss"))
