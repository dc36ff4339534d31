"""DiffuSeq as a `Method`: sequence-to-sequence diffusion over learned word embeddings (Gong et al. 2022).

`DiffuSeq(network, schedule, pad_id=...)`, or `DiffuSeq.from_config(config)`, gives the engine what every method
gives it: `init_params`, a pure `loss_fn(params, rng, batch) -> (loss, metrics)` and `make_sampler`.

Importance sampling of t, and why it is not in `loss_fn`. Loss-aware sampling needs a history of losses
that changes every step, and `loss_fn` has no state. Of the two designs — thread an extra state through the
trainer, or keep `loss_fn` uniform and make importance sampling an optional pure add-on — this takes the
second, because it keeps the method contract and the generic trainer unchanged:
- `loss_fn` draws t uniformly per example (keyed on example_index); if the batch carries "t" [b] and
  "t_weight" [b] it uses those instead.
- `importance_loss_fn(params, rng, batch, is_state) -> (loss, (metrics, new_is_state))` is the same loss with
  t drawn from the importance sampler and the state updated with the step's losses. A trainer that wants it
  keeps `is_state = method.init_importance_state()` beside its TrainState (replicated like params, and
  checkpointed with it), calls `jax.value_and_grad(method.importance_loss_fn, has_aux=True)(params, rng,
  batch, is_state)`, pmeans the grads and metrics, and stores `new_is_state` as is (it is already identical
  on every device: `importance.update_global` gathers the whole step's (t, loss) pairs in global example
  order). A step on n devices therefore equals the single-device step, state included (up to the float
  rounding of the losses themselves, which XLA may compute in a different order for a different batch shape).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from ldlg.methods.base import METHODS, Batch, Method
from ldlg.methods.gaussian.schedules import Schedule, get_schedule
from ldlg.methods.seq2seq import importance
from ldlg.methods.seq2seq import losses as losses_lib
from ldlg.methods.seq2seq import samplers as samplers_lib
from ldlg.methods.seq2seq.network import Seq2SeqDenoiser

# Which config fields are read, with their defaults (DiffuSeq's settings where it has one).
DIFFUSION_DEFAULTS = {"schedule": "sqrt", "num_timesteps": 2000, "learn_padding": True, "embed_noise": True,
                      "importance_sampling": True, "importance_history": importance.HISTORY,
                      "importance_uniform_prob": importance.UNIFORM_PROB}
SAMPLE_DEFAULTS = {"num_steps": 200, "eta": 1.0, "clamp": True, "rounding": "logits"}


@METHODS.register("diffuseq")
class DiffuSeq(Method):
  """DiffuSeq: partial noising of [source ; target] embeddings, one bidirectional transformer, rounding.

  Args:
    network: the `Seq2SeqDenoiser` (owns the embedding).
    schedule: the noise schedule (DiffuSeq: sqrt, T = 2000).
    pad_id: the codec's pad token.
    end_id: the codec's end-of-text token (a stop token at sampling), or None.
    learn_padding, embed_noise: see `losses.py`.
    sample_defaults: defaults of `make_sampler`'s options (num_steps, eta, clamp, rounding).
    importance_history, importance_uniform_prob: H and u of the importance sampler.
  """

  name = "diffuseq"
  batch_fields = losses_lib.BATCH_FIELDS

  def __init__(self, network: Seq2SeqDenoiser, schedule: Schedule, *, pad_id: int, end_id: int | None = None,
               learn_padding: bool = True, embed_noise: bool = True,
               sample_defaults: Mapping[str, Any] | None = None,
               importance_history: int = importance.HISTORY,
               importance_uniform_prob: float = importance.UNIFORM_PROB):
    if not 0 <= pad_id < network.vocab_size:
      raise ValueError(f"pad_id={pad_id} is outside the vocabulary [0, {network.vocab_size})")
    if network.num_timesteps != schedule.num_timesteps:
      raise ValueError(f"the network embeds t for T={network.num_timesteps} but the schedule has "
                       f"T={schedule.num_timesteps}; build both from config.diffusion.num_timesteps")
    self.network = network
    self.schedule = schedule
    self.pad_id = int(pad_id)
    self.end_id = None if end_id is None else int(end_id)
    self.learn_padding = bool(learn_padding)
    self.sample_defaults = dict(SAMPLE_DEFAULTS, **(sample_defaults or {}))
    self.importance_history = int(importance_history)
    self.importance_uniform_prob = float(importance_uniform_prob)
    kw = dict(pad_id=self.pad_id, learn_padding=self.learn_padding, embed_noise=bool(embed_noise))
    self._train_terms = losses_lib.make_per_example_loss_fn(network, schedule, train=True, **kw)
    self._eval_terms = losses_lib.make_per_example_loss_fn(network, schedule, train=False, **kw)

  @classmethod
  def from_config(cls, config: Any, *, pad_id: int | None = None, end_id: int | None = None,
                  vocab_size: int | None = None) -> "DiffuSeq":
    """The one place DiffuSeq is built from a config.

    Reads:
      config.model: `Seq2SeqDenoiser(**config.model)` fields (vocab_size — the codec's; the `vocab_size`
        argument, when given, replaces it —, embed_dim, dim, num_layers, num_heads, ff_mult, max_len, dropout,
        dtype, embed_init_std, segment_embedding); `num_timesteps`, if absent, is taken from config.diffusion.
      config.diffusion: `schedule` ("sqrt"), `num_timesteps` (2000), `learn_padding` (True), `embed_noise`
        (True), `importance_history` (10), `importance_uniform_prob` (0.001), and `pad_id` / `end_id` when
        not passed as arguments (the codec's ids; the pipeline passes them). `importance_sampling` (True) is
        read by the train stage (`stages.py`), which then trains with `importance_loss_fn`.
      config.sample (optional): `num_steps` (200), `eta` (1.0), `clamp` (True), `rounding` ("logits").
    A missing field takes the default in brackets.
    """
    diffusion = config.diffusion
    get = lambda field: getattr(diffusion, field, DIFFUSION_DEFAULTS.get(field))
    num_timesteps = int(get("num_timesteps"))
    model_kw = dict(config.model)
    model_kw.setdefault("num_timesteps", num_timesteps)
    if vocab_size is not None:
      model_kw["vocab_size"] = int(vocab_size)
    pad_id = pad_id if pad_id is not None else getattr(diffusion, "pad_id", None)
    if pad_id is None:
      raise ValueError("DiffuSeq needs the codec's pad token id: pass pad_id= or set config.diffusion.pad_id")
    end_id = end_id if end_id is not None else getattr(diffusion, "end_id", None)
    sample_cfg = getattr(config, "sample", None)
    sample_defaults = {k: getattr(sample_cfg, k) for k in SAMPLE_DEFAULTS
                       if sample_cfg is not None and getattr(sample_cfg, k, None) is not None}
    return cls(Seq2SeqDenoiser(**model_kw), get_schedule(get("schedule"), num_timesteps), pad_id=int(pad_id),
               end_id=end_id, learn_padding=bool(get("learn_padding")), embed_noise=bool(get("embed_noise")),
               sample_defaults=sample_defaults, importance_history=int(get("importance_history")),
               importance_uniform_prob=float(get("importance_uniform_prob")))

  @staticmethod
  def stages() -> tuple:
    from ldlg.methods.seq2seq import stages  # pylint: disable=import-outside-toplevel
    return stages.stages()

  def init_params(self, rng: jax.Array) -> Any:
    """The network's parameters (embedding included), from a dummy [1, 2] sequence (shapes do not depend on L)."""
    def init(rng):
      ids = jnp.zeros((1, 2), jnp.int32)
      return self.network.init(rng, ids, jnp.zeros((1,), jnp.int32), jnp.ones((1, 2), bool),
                               method=Seq2SeqDenoiser.init_all)["params"]
    # Jitted: an eager init would compile once per layer op.
    return jax.jit(init)(rng)

  def loss_fn(self, params: Any, rng: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The DiffuSeq objective with uniform t (or the batch's "t"/"t_weight"); see `losses.py`."""
    loss, metrics, _, _ = self._train_terms(params, rng, batch)
    return loss, metrics

  def eval_loss_fn(self, params: Any, rng: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    loss, metrics, _, _ = self._eval_terms(params, rng, batch)
    return loss, metrics

  def init_importance_state(self) -> importance.ImportanceState:
    """An empty importance-sampling history for this method's T."""
    return importance.init_state(self.schedule.num_timesteps, self.importance_history,
                                 self.importance_uniform_prob)

  def importance_loss_fn(self, params: Any, rng: jax.Array, batch: Batch,
                         is_state: importance.ImportanceState):
    """The loss with t ~ the importance sampler, weighted by 1 / (T p_t); returns the updated sampler state.

    Returns:
      (loss [], (metrics, new_is_state)); use with `jax.value_and_grad(..., has_aux=True)`.
    """
    t, weight = importance.sample_t(is_state, jax.random.fold_in(rng, 2), batch)
    example_index = batch.get("example_index")
    if example_index is None:
      example_index = jnp.arange(t.shape[0])
    loss, metrics, per_example, _ = self._train_terms(params, rng, dict(batch, t=t, t_weight=weight))
    new_state = importance.update_global(is_state, t, per_example, example_index)
    metrics = dict(metrics, importance_warm=importance.is_warm(is_state).astype(jnp.float32))
    return loss, (metrics, new_state)

  def make_sampler(self, **overrides: Any) -> samplers_lib.SampleFn:
    """The jitted sampler of `samplers.make_sampler`; options default to `sample_defaults`.

    Args:
      **overrides: num_steps, eta, clamp, rounding, return_trajectory.
    """
    opts = dict(self.sample_defaults, **overrides)
    unknown = sorted(set(opts) - set(SAMPLE_DEFAULTS) - {"return_trajectory"})
    if unknown:
      raise ValueError(f"unknown sampler options {unknown}; choose from {sorted(SAMPLE_DEFAULTS)} or "
                       "return_trajectory")
    return samplers_lib.make_sampler(
        self.network, self.schedule, pad_id=self.pad_id,
        stop_ids=() if self.end_id is None else (self.end_id,), num_steps=int(opts["num_steps"]),
        eta=float(opts["eta"]), clamp=bool(opts["clamp"]), rounding_rule=opts["rounding"],
        learn_padding=self.learn_padding, return_trajectory=bool(opts.get("return_trajectory", False)))
