"""ListOps as in Long Range Arena (Tay et al. 2020): lengths 500-2000, 96K/2K/2K examples.

    python launch.py --config configs/listops.py --workdir runs/listops
    python launch.py --config configs/listops.py --workdir runs/listops_small \
        --config.data.min_length=100 --config.data.max_length=400 --config.data.num_train=20000

The model is LRA's: an encoder-only classifier whose head reads a learned CLS token
(`--config.model.pooling=mean` for mean pooling); `test_accuracy` is the answer's accuracy.
`--config.model.shape=encoder_decoder` reads the answer out with a one-token decoder instead
(softmax cross-attention, which can do the work the variant under test should do: keep it
for comparison only). The data (generated once, ~1 minute at LRA's size)
is LRA's rules: see experiments/tasks/listops.py. The model here is LRA's (6 layers,
d=512, 8 heads, d_ff=2048, batch 32, 5,000 steps): a GPU job. For the comparison of variants
and the published numbers, see configs/paper/lra_listops.py.
"""

from configs import base


def get_config():
  c = base.for_task("listops", min_length=500, max_length=2000, num_train=96_000, num_eval=2_000,
                    batch_size=32, eval_batch_size=32)
  c.model.update(dict(d_model=512, num_heads=8, d_ff=2048, num_encoder_layers=6,
                      pooling="cls",
                      num_decoder_layers=1, cross_attention="softmax"))  # for encoder_decoder
  # LRA: base rate 0.05 x linear warmup (1000) x rsqrt decay, i.e. a peak of 0.05/sqrt(1000).
  c.optimizer.update(dict(learning_rate=0.05 / 1000**0.5, warmup_steps=1_000, decay="rsqrt",
                          weight_decay=0.1))
  c.update(dict(num_train_steps=5_000, eval_every=500, checkpoint_every=500, eval_batches=8,
                decode_splits=("validation", "test")))
  return c
