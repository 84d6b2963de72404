"""Defaults shared by every experiment; each configs/<task>.py starts from these.

Every field can be overridden on the command line, e.g. `--config.model.attention=linear`;
the config is locked, so a misspelt field fails before anything runs.
"""

import ml_collections
from ml_collections import config_dict

import attention_zoo


def variant_options() -> ml_collections.ConfigDict:
  """Each variant's options (defaults from the registry), overridable one by one, e.g.
  `--config.model.options.local.local_window_size=16`. Only the chosen variants' are used."""
  options = {name: dict(attention_zoo.options(name)) for name in attention_zoo.names()}
  options["local"]["local_window_size"] = 8  # symmetric; (8, 0) in causal self-attention
  return ml_collections.ConfigDict(options)


def for_task(task: str, **data) -> ml_collections.ConfigDict:
  """The defaults with `config.data.task` (and any `data` fields) set, locked."""
  c = get_config()
  c.data.task = task
  c.data.update(data)
  return c.lock()


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0                        # parameters, dropout and data order

  c.data = ml_collections.ConfigDict()
  c.data.task = "copy"              # one of experiments.tasks.TASKS
  c.data.data_dir = "~/tensorflow_datasets"  # where TFDS builds and finds the data
  c.data.vocab_size = 10            # synthetic: symbols per position
  c.data.min_length = 4             # synthetic: shortest sequence (addition: digits)
  c.data.max_length = 32            # synthetic: longest training/validation/test sequence
  c.data.long_max_length = 64       # synthetic: test_long draws (max_length, long_max_length]
  c.data.num_train = 20_000         # synthetic: training examples
  c.data.num_eval = 1_000           # synthetic: examples per evaluation split
  c.data.data_seed = 0              # synthetic: seed of the generated data
  c.data.tfds_name = config_dict.placeholder(str)  # text: a TFDS text-pair dataset
  c.data.input_key = "en"           # text: feature holding the source text
  c.data.target_key = "pig"         # text: feature holding the target text
  c.data.max_input_length = 64      # text: bytes per source (longer: see truncate)
  c.data.max_target_length = 64     # text: bytes per target, without EOS
  c.data.truncate = False           # cut over-long examples instead of failing on them
  c.data.batch_size = 32
  c.data.eval_batch_size = 64

  c.model = ml_collections.ConfigDict()
  c.model.attention = "softmax"     # encoder and decoder self-attention: attention_zoo.names()
  c.model.cross_attention = config_dict.placeholder(str)  # None: the same as attention
  c.model.options = variant_options()
  c.model.d_model = 128
  c.model.num_heads = 4
  c.model.num_kv_heads = config_dict.placeholder(int)  # None: num_heads (no grouping)
  c.model.d_ff = 512
  c.model.num_encoder_layers = 2
  c.model.num_decoder_layers = 2
  c.model.dropout_rate = 0.0

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 1e-3  # peak, reached after warmup
  c.optimizer.warmup_steps = 100
  c.optimizer.decay = "cosine"      # cosine (to 0 at the last step), rsqrt or constant
  c.optimizer.weight_decay = 1e-4   # AdamW, decoupled
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.98
  c.optimizer.grad_clip = 1.0       # global norm

  c.num_train_steps = 2_000
  c.log_every = 50                  # train metrics to metrics.jsonl / TensorBoard
  c.eval_every = 500                # validation loss on eval_batches batches, best checkpoint
  c.eval_batches = 4
  c.checkpoint_every = 500
  c.keep_checkpoints = 2            # latest kept; the best by validation loss is kept apart
  c.decode_splits = ("validation", "test", "test_long")  # final evaluation with decoding
  c.beam_size = 1                   # 1: greedy decoding; more: beam search
  c.progress_bar = True
  return c
