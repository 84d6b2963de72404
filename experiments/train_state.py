"""The train state: a typed pytree that the loop, the benchmarks and the paper tables share.

`TrainState.create(model_config, tx, seed)` is the one place a model and its optimizer
state are built. Its array fields (step, params, opt_state, nonfinite_step) are what the
checkpoints hold, under those names: a checkpoint written when the state was a dict of
the same four entries restores into it unchanged. The graph definition and the optimizer
are static fields (not arrays, not saved), so a jitted step takes the state alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from attention_zoo import registry
from experiments.model import Transformer, TransformerConfig


@struct.dataclass
class TrainState:
  step: jax.Array                   # int32 []: optimizer steps taken
  params: nnx.State                 # the model's variables (nnx.split)
  opt_state: optax.OptState
  nonfinite_step: jax.Array         # int32 []: the first step whose loss was NaN/Inf; -1: none
  graphdef: nnx.GraphDef = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  @classmethod
  def create(cls, model_config: TransformerConfig, tx: optax.GradientTransformation,
             seed: int) -> TrainState:
    """A freshly initialised model (parameters from `seed`) and its optimizer state."""
    graphdef, params = nnx.split(Transformer(model_config, rngs=nnx.Rngs(seed)))
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
               nonfinite_step=jnp.full((), -1, jnp.int32), graphdef=graphdef, tx=tx)

  def model(self) -> Transformer:
    return nnx.merge(self.graphdef, self.params)

  def apply_gradients(self, grads, loss) -> TrainState:
    """One optimizer step; a NaN/Inf `loss` is remembered (the loop raises when it next
    reads the state, naming the step)."""
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    step = self.step + 1
    first_bad = (self.nonfinite_step < 0) & ~jnp.isfinite(loss)
    return self.replace(step=step, params=optax.apply_updates(self.params, updates),
                        opt_state=opt_state,
                        nonfinite_step=jnp.where(first_bad, step, self.nonfinite_step))


def model_config(model, vocab_size: int, shape: str = "encoder_decoder",
                 num_classes: int | None = None) -> TransformerConfig:
  """The typed model config of a config.model block (model code never reads a ConfigDict);
  each attention role's variant gets its options block."""
  used = {model.attention, model.cross_attention or model.attention,
          model.encoder_attention or model.attention}
  options = tuple((name, registry.frozen(model.options[name])) for name in sorted(used))
  return TransformerConfig(
      vocab_size=vocab_size, shape=shape, pooling=model.pooling, positions=model.positions,
      max_positions=model.max_positions,
      num_classes=num_classes, d_model=model.d_model, num_heads=model.num_heads,
      num_kv_heads=model.num_kv_heads, d_ff=model.d_ff,
      num_encoder_layers=model.num_encoder_layers, num_decoder_layers=model.num_decoder_layers,
      dropout_rate=model.dropout_rate, attention=model.attention,
      cross_attention=model.cross_attention, encoder_attention=model.encoder_attention,
      attention_options=options)
