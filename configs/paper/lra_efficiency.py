"""Long Range Arena (Tay et al. 2020), Table 2: training speed and memory at 1K-4K.

Steps per second and peak memory of one training step relative to the softmax
Transformer, byte-level text classification (here: a one-token seq2seq answer, so one
decoder position with softmax cross-attention). Model as LRA's text task: 4 encoder
layers, d=256, 4 heads, MLP 1024; batch 1 here (the paper: 32 on TPU V3).
Published: Transformer 8.1 / 4.9 / 2.3 / 1.4 steps/s and 0.85 / 2.65 / 5.51 / 9.48 GB at
1K / 2K / 3K / 4K; at 4K local 5.3x faster in 1.37 GB, Linear Transformer 5.6x in
1.03 GB, Performer 5.7x in 1.06 GB.

    python launch.py bench --config configs/paper/lra_efficiency.py --workdir runs/lra_efficiency

Expected on the 2-core CPU: ~3 minutes (measured 184 s). Measured at 4K: local 10.8x,
linear 12.2x, Performer 9.8x the softmax Transformer's steps/s, in 0.21-0.28x its memory.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.kind = "lra_efficiency"
  c.lengths = (1024, 2048, 3072, 4096)
  c.variants = ("softmax", "chunked", "local:local_window_size=128", "linear",
                "linear:feature_map='favor'")
  c.batch_size = 1
  c.model = ml_collections.ConfigDict(dict(
      d_model=256, num_heads=4, num_kv_heads=None, d_ff=1024, num_encoder_layers=4,
      num_decoder_layers=1, dropout_rate=0.1, cross_attention="softmax"))
  c.repeats, c.seconds_per_case = 3, 30.0
  c.memory_fraction = 0.8
  return c.lock()
