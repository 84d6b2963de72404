"""A tiny experiment config for end-to-end tests (seconds per run on 2 CPU cores)."""

from configs import base, copy as copy_config


def config(variant="softmax", data_dir="/tmp", **overrides):
  c = copy_config.get_config()
  c.data.data_dir = str(data_dir)
  c.data.num_train, c.data.num_eval = 256, 40
  c.data.min_length, c.data.max_length, c.data.long_max_length = 2, 6, 8
  c.data.batch_size, c.data.eval_batch_size = 8, 16
  base.override(c, base.attention_fields(variant))
  c.model.options.local.local_window_size = 3
  c.model.d_model, c.model.num_heads, c.model.num_kv_heads, c.model.d_ff = 32, 4, 2, 64
  c.model.num_encoder_layers = c.model.num_decoder_layers = 1
  c.num_train_steps, c.log_every, c.eval_every, c.checkpoint_every = 2, 1, 2, 2
  c.eval_batches, c.progress_bar = 1, False
  return base.override(c, overrides)


def model_roles(variant: str) -> dict:
  """TransformerConfig fields for `variant` in every role it can take (see
  configs.base.attention_fields): softmax where a causal-only variant cannot serve."""
  fields = base.attention_fields(variant)
  return {f.split(".")[-1]: v for f, v in fields.items() if f != "model.attention"}
