"""Katharopoulos et al. (2020), "Transformers are RNNs", §4.1.1 and Fig. 2: sequence duplication.

The copy task with 10 symbols (the decoder's begin-of-sequence token is the separator),
sequences of at most 128 symbols, 4 layers, 8 heads, batch 64, RAdam at 1e-3 dropped to
1e-4 after 3,000 updates. Published finding (Fig. 2, loss against gradient steps): linear
attention converges smoothly, to the same loss as softmax; the paper gives curves, no table.
We compare softmax, chunked, local and linear over three seeds, with the loss curves.

    python launch.py sweep --config configs/paper/katharopoulos_copy.py:reduced \
        --workdir runs/katharopoulos_reduced          # the 2-core CPU: see REDUCED below
    python launch.py sweep --config configs/paper/katharopoulos_copy.py \
        --workdir runs/katharopoulos                  # paper scale: for a GPU

Our model is the encoder-decoder of this codebase with 4 layers in all (2 + 2), d=256.
Paper scale: 10,000 updates per run, 12 runs (not run here: no GPU was at hand).
REDUCED (the same grid, sized for 2 CPU cores): lengths up to 48, d=64, batch 32, 1,200 updates,
the drop to 1e-4 after 800. Measured on 2 CPU cores: 23 min 12 s for the 12 runs; test loss
(mean ± std over 3 seeds) softmax 0.0128 ± 0.0180, chunked 0.0128 ± 0.0184, local
0.0107 ± 0.0118, linear 1.0088 ± 0.0277: linear falls smoothly but has not converged
within this budget (exact-sequence accuracy 0.95 for the others, 0.16 for linear).
"""

from configs import base


def get_config(scale: str = "paper"):
  if scale not in ("paper", "reduced"):
    raise ValueError(f"configs/paper/katharopoulos_copy.py:{scale}: choose paper or reduced")
  reduced = scale == "reduced"
  c = base.for_task("copy", vocab_size=10, min_length=1, max_length=48 if reduced else 128,
                    long_max_length=64 if reduced else 256, batch_size=32 if reduced else 64)
  c.model.update(dict(d_model=64 if reduced else 256, num_heads=8, d_ff=256 if reduced else 1024,
                      num_encoder_layers=2, num_decoder_layers=2))
  c.model.options.local.local_window_size = 8
  c.optimizer.update(dict(name="radam", learning_rate=1e-3, warmup_steps=0, decay="step",
                          drop_at=800 if reduced else 3_000, drop_factor=0.1, weight_decay=0.0))
  c.update(dict(num_train_steps=1_200 if reduced else 10_000, log_every=25 if reduced else 100,
                eval_every=200 if reduced else 1_000, checkpoint_every=400 if reduced else 1_000))
  return base.sweep(c, axes=[("model.attention", ("softmax", "chunked", "local", "linear")),
                             ("seed", (0, 1, 2))],
                    rows=["model.attention"], curves=("train_loss", "validation_loss"),
                    metrics=("test_loss", "test_token_accuracy", "test_exact_accuracy"))
