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
  # A field whose value is None has no type the command line can parse into; one of type
  # object takes a Python literal (`=64`, `=xla`: a string where it is not a literal).
  options = {name: {option: config_dict.placeholder(object) if default is None else default
                    for option, default in attention_zoo.options(name).items()}
             for name in attention_zoo.names()}
  options["local"]["local_window_size"] = 8  # symmetric; (8, 0) in causal self-attention
  return ml_collections.ConfigDict(options)


def attention_fields(variant: str) -> dict[str, str]:
  """Config fields that put `variant` in every attention role it can take: a causal-only
  variant (a recurrence) takes the decoder's self-attention and softmax the other roles."""
  fields = {"model.attention": variant}
  if attention_zoo.registry.entry(variant).causal_only:
    fields.update({"model.encoder_attention": "softmax", "model.cross_attention": "softmax"})
  return fields


def override(config, fields: dict) -> ml_collections.ConfigDict:
  """Sets dotted `fields` ({"model.attention": "linear", ...}) on `config`, in place."""
  for dotted, value in fields.items():
    node = config
    *path, last = dotted.split(".")
    for part in path:
      node = node[part]
    node[last] = value
  return config


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
  c.data.vocab_size = 10            # synthetic: symbols per position; mqar: V
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
  c.data.mqar_train_pairs = ((64, 4), (128, 8), (256, 16), (256, 32), (256, 64))  # mqar: (L, N)
  c.data.mqar_test_pairs = ((64, 4), (128, 8), (256, 16), (512, 64))  # mqar: a split each
  c.data.random_non_queries = False  # mqar: filler tokens random (zoology's default) or 0
  c.data.packing = False            # training rows hold several examples (segment ids;
  #                                 decoder and encoder_decoder shapes; evaluation unpacked)
  c.data.batch_size = 32
  c.data.eval_batch_size = 64

  c.model = ml_collections.ConfigDict()
  c.model.shape = config_dict.placeholder(str)  # None: the task's; encoder_decoder, decoder
  #                                 (causal LM) or encoder (classifier): experiments/model.py
  c.model.pooling = "cls"           # encoder (classifier): cls or mean
  c.model.positions = "sinusoidal"  # sinusoidal, learned, rope, alibi or none (model.py)
  c.model.max_positions = 1024      # learned positions: the table's rows
  c.model.attention = "softmax"     # decoder (and encoder) self-attention: attention_zoo.names()
  c.model.cross_attention = config_dict.placeholder(str)  # None: the same as attention
  c.model.encoder_attention = config_dict.placeholder(str)  # None: the same as attention
  c.model.options = variant_options()
  c.model.d_model = 128
  c.model.num_heads = 4
  c.model.num_kv_heads = config_dict.placeholder(int)  # None: num_heads (no grouping)
  c.model.d_ff = 512
  c.model.num_encoder_layers = 2
  c.model.num_decoder_layers = 2
  c.model.dropout_rate = 0.0

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"        # adamw or radam
  c.optimizer.learning_rate = 1e-3  # peak, reached after warmup
  c.optimizer.warmup_steps = 100
  c.optimizer.decay = "cosine"      # cosine (to 0 at the last step), rsqrt, step or constant
  c.optimizer.drop_at = 0           # step decay: the step at which the rate is multiplied...
  c.optimizer.drop_factor = 0.1     # ... by this factor
  c.optimizer.weight_decay = 1e-4   # decoupled (AdamW; RAdam: added to its update)
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.98
  c.optimizer.grad_clip = 1.0       # global norm

  c.mesh = ml_collections.ConfigDict()  # devices per mesh axis (experiments/parallel.py)
  c.mesh.data = -1                  # batch split; -1: every device the other axes leave
  c.mesh.fsdp = 1                   # batch, parameters and optimizer state split
  c.mesh.sequence = 1               # sequences split (ring attention only)

  c.num_train_steps = 2_000
  c.log_every = 50                  # train metrics to metrics.jsonl / TensorBoard
  c.eval_every = 500                # validation loss on eval_batches batches, best checkpoint
  c.eval_batches = 4
  c.checkpoint_every = 500
  c.keep_checkpoints = 2            # latest kept; the best by validation loss is kept apart
  c.decode_splits = ("validation", "test", "test_long")  # final evaluation with decoding
  c.beam_size = 1                   # 1: greedy decoding; more: beam search
  c.reevaluate = False              # a finished run: evaluate again, replacing its final record
  c.progress_bar = True
  return c


def sweep(base_config, axes, rows, columns=None, over="seed", metrics=(
    "test_exact_accuracy", "test_loss"), curves=("train_loss",), x_axis=None, published=None,
          parallel=1, best_over=None, x_metric=None, minutes=None,
          reuse=()) -> ml_collections.ConfigDict:
  """A sweep config (see experiments/sweeps): `base_config` run over the product of `axes`.

  The table has a row per value of the `rows` axes, a column per value of `columns` (else
  a column per metric), and aggregates over `over` (mean ± std); `curves` are plotted
  against the step, and the metrics against `x_axis` (the columns axis, e.g. a length).
  `published`: {source, metric, scale, values: {row: number}} printed beside ours.
  `best_over`: an axis (e.g. the learning rate) of which each cell reports its best value's
  runs (by the first metric); `x_metric`: a final metric (e.g. state_size) to plot the
  metrics against, a point per cell. `minutes`: the whole sweep's measured wall time on a
  2-core CPU, which it announces (scaled to the runs left) before it starts. `reuse`:
  workdirs of other sweeps whose finished runs with this sweep's configs are copied, not
  run again.
  """
  c = ml_collections.ConfigDict()
  c.base = base_config              # the experiment every run starts from
  c.axes = tuple(axes)              # ((name, values), ...): see experiments/sweeps/grid.py
  c.parallel = parallel             # runs at a time (each a process)
  c.retry_failed = False            # re-launching retries runs recorded as failed
  c.reuse = tuple(reuse)            # other sweeps' workdirs: their finished runs of the same
  #                                   config are copied rather than run again
  c.minutes = minutes               # expected wall time (2-core CPU), announced at the start
  c.table = ml_collections.ConfigDict(dict(
      rows=tuple(rows), columns=columns, over=over, metrics=tuple(metrics),
      curves=tuple(curves), x_axis=x_axis, published=published, best_over=best_over,
      x_metric=x_metric))
  return c.lock()
