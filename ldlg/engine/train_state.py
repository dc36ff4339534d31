"""The training state (params, EMA params, optimizer state) and the optimizer built from config."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax


class TrainState(flax.struct.PyTreeNode):
  """Everything a training step reads and writes; a pytree, so it can be pmapped, donated and checkpointed.

  The optimizer transformation is static (not a pytree leaf): it is rebuilt from the config on resume, and only
  its state is saved. `method_state` is a method's own training state beside the parameters (DiffuSeq's loss
  history for importance sampling of t), or None; it is saved and restored with the rest.
  """
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  method_state: Any = None

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation, *, ema: bool = True,
             method_state: Any = None) -> "TrainState":
    """A state at step 0; with ema=False no EMA copy is kept (ema_params is None)."""
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               ema_params=jax.tree.map(jnp.copy, params) if ema else None, opt_state=tx.init(params), tx=tx,
               method_state=method_state)

  def apply_gradients(self, grads, *, ema_decay: float | None, ema_warmup: bool,
                      ema_power: float = 0.0) -> "TrainState":
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    params = optax.apply_updates(self.params, updates)
    ema_params = self.ema_params
    if ema_decay is not None:
      decay = ema_decay_at(self.step, ema_decay, ema_warmup, ema_power)
      ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, self.ema_params, params)
    return self.replace(step=self.step + 1, params=params, ema_params=ema_params, opt_state=opt_state)

  def to_dict(self) -> dict:
    """The saved form of the state (no optimizer transformation; "method_state" only when there is one, so the
    checkpoints of methods without one keep their layout)."""
    saved = {"step": self.step, "params": self.params, "ema_params": self.ema_params,
             "opt_state": self.opt_state}
    if self.method_state is not None:
      saved["method_state"] = self.method_state
    return saved

  def from_dict(self, saved: dict) -> "TrainState":
    if (self.method_state is None) != (saved.get("method_state") is None):
      raise ValueError("the checkpoint and the run disagree on whether training keeps a method state (e.g. "
                       "DiffuSeq's importance-sampling history, config.diffusion.importance_sampling): resume "
                       "with the setting the run was trained with, or start a new workdir")
    return self.replace(step=saved["step"], params=saved["params"], ema_params=saved["ema_params"],
                        opt_state=saved["opt_state"], method_state=saved.get("method_state"))


def ema_decay_at(step: jax.Array, decay: float, warmup: bool, power: float = 0.0) -> jax.Array:
  """EMA decay at a step. With warmup, min(decay, (1 + t) / (10 + t)) so early averages are not stuck at init;
  with power > 0 instead ema_pytorch's min(decay, 1 - (1 + t)^-power) (the official LD4LG code: power 3/4)."""
  if not warmup:
    return jnp.asarray(decay, jnp.float32)
  step = step.astype(jnp.float32)
  if power > 0:
    return jnp.minimum(decay, 1.0 - (1.0 + step) ** -power)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def learning_rate_schedule(optim: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warmup to `optim.lr`, then cosine decay to `end_lr_fraction` (default 0) x lr at `num_steps`
  (or constant)."""
  warmup = max(int(optim.warmup_steps), 0)
  end_value = float(optim.get("end_lr_fraction", 0.0)) * optim.lr
  if optim.schedule == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, optim.lr, max(warmup, 1)), optax.constant_schedule(optim.lr)], [warmup])
  if optim.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=optim.lr, warmup_steps=warmup, decay_steps=max(num_steps, warmup + 1),
        end_value=end_value)
  raise ValueError(f"config.optim.schedule={optim.schedule!r} is not known; use 'cosine' or 'constant'")


def make_optimizer(optim: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
  """AdamW with global-norm clipping and the warmup + cosine learning rate.

  Reads optim.lr, warmup_steps, schedule, weight_decay, b1, b2, eps, grad_clip, and optionally
  end_lr_fraction (0) and decay_mask ("all" | "matrices": no weight decay on biases and LayerNorm scales, the
  1-D leaves, as BART's pretraining recipe).
  """
  if optim.lr <= 0:
    raise ValueError(f"config.optim.lr must be positive, got {optim.lr}")
  parts = []
  if optim.grad_clip and optim.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(optim.grad_clip))
  decay_mask = optim.get("decay_mask", "all")
  if decay_mask not in ("all", "matrices"):
    raise ValueError(f"optim.decay_mask={decay_mask!r} is not known; use 'all' or 'matrices'")
  mask = (lambda params: jax.tree.map(lambda p: p.ndim > 1, params)) if decay_mask == "matrices" else None
  parts.append(optax.adamw(learning_rate_schedule(optim, num_steps), b1=optim.b1, b2=optim.b2,
                           eps=optim.eps, weight_decay=optim.weight_decay, mask=mask))
  return optax.chain(*parts)
