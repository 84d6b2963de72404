"""Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology"): a decoder-only LM.

    python launch.py --config configs/mqar.py:reduced --workdir runs/mqar     # minutes, 2 cores
    python launch.py --config configs/mqar.py --workdir runs/mqar_paper       # a GPU job
    python launch.py --config configs/mqar.py:reduced --workdir runs/mqar_gla \
        --config.model.attention=gla

The model is a 2-layer decoder-only Transformer (the variant in every self-attention);
the metric is the accuracy over the query positions (recalling each key's value), per
(L, N) test split (`test_L{L}_N{N}_accuracy`) and pooled (`test_accuracy`);
`final_metrics.json` also holds the variant's decoding `state_size` (floats, all layers).

Paper scale (Zoology Fig. 2): V = 8192; training mixes (L, N) = (64, 4), (128, 8),
(256, 16), (256, 32), (256, 64), 100K examples; test splits (64, 4), (128, 8), (256, 16),
(512, 64), 3K each; d = 128 here (the figure sweeps 64-512: configs/sweeps/mqar_width.py);
batch 64, 64 epochs (100K steps), learning rate 1e-3 (the figure takes the best of a sweep).
Not run here: no GPU was at hand.

REDUCED (2 CPU cores): V = 256, training (64, 4) and (128, 8) with 20K examples, tests
(64, 4), (128, 8) and (128, 16) (more pairs than seen in training), 1K each; d = 64, 2
layers, batch 32, 6,000 steps at a constant 3e-3 after 100 warmup steps, no weight decay:
about 8 minutes on 2 idle cores (12-15 steps/s). Measured with softmax attention (rope,
5,000 steps, the CPU shared with other jobs): validation accuracy 21% at 1,000 steps, 36%
at 2,000, 55% at 3,000, 67% at 4,000: softmax needs about this budget to leave the plateau
at this scale. It does not reach 0.99 within 6,000 steps: 0.78 validation accuracy (seed 0,
the zoology sweep's run; GLA and the delta rule reach 0.99 at the trained sizes). 3e-3 is
the best of 1e-3, 3e-3 and 1e-2 for softmax here: validation accuracy 0.21, 0.55 and 0.17
at 3,000 steps (`--config.optimizer.learning_rate=... --config.num_train_steps=3000`).
"""

from configs import base


def get_config(scale: str = "paper"):
  if scale not in ("paper", "reduced"):
    raise ValueError(f"configs/mqar.py:{scale}: choose paper or reduced")
  c = base.for_task("mqar", vocab_size=8192, num_train=100_000, num_eval=3_000, batch_size=64,
                    eval_batch_size=64)
  c.model.update(dict(d_model=128, num_heads=2, d_ff=256, num_decoder_layers=2))
  c.model.options.local.local_window_size = 64  # causal: a state budget of the last 65 tokens
  # Rotary positions: with sinusoids added to the embeddings softmax attention was still at
  # the plateau (22% accuracy, a value of the context at random) after 4,000 steps of
  # REDUCED; with rope it left it after ~1,500 (55% at 3,000, 67% at 4,000, rising).
  c.model.positions = "rope"
  c.optimizer.update(dict(learning_rate=1e-3, warmup_steps=1_000, weight_decay=0.1))
  c.update(dict(num_train_steps=100_000, log_every=500, eval_every=5_000,
                checkpoint_every=5_000, eval_batches=8, decode_splits=("validation", "test")))
  if scale == "reduced":
    c.data.update(dict(vocab_size=256, num_train=20_000, num_eval=1_000, batch_size=32,
                       mqar_train_pairs=((64, 4), (128, 8)),
                       mqar_test_pairs=((64, 4), (128, 8), (128, 16))))
    c.model.update(dict(d_model=64, num_heads=2, d_ff=128))
    c.optimizer.update(dict(learning_rate=3e-3, warmup_steps=100, decay="constant",
                            weight_decay=0.0))
    c.update(dict(num_train_steps=6_000, log_every=100, eval_every=1_000,
                  checkpoint_every=1_000, eval_batches=4))
  return c
