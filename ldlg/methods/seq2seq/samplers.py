"""DiffuSeq sampling: DDIM-style steps over the target, the source anchored to its clean embedding.

Over a decreasing list of S timesteps τ_S > ... > τ_1 strided over the T trained ones (step skipping):

  z      ← [EMB(w_x) ; N(0, I)]                            start: clean source, pure-noise target
  ŷ0_i   = f_θ(z, τ_i), then (with `clamp`) each target vector replaced by its nearest embedding row
  z      ← a_i ŷ0_i + b_i z + σ_i ε_i                     the DDIM recursion of `ldlg.methods.gaussian.samplers`
  z      ← [EMB(w_x) ; z_tgt]                              re-anchor the source at EVERY step

and the result is the last ŷ0 (the last step has a = 1, b = σ = 0), rounded to tokens and cut at the first
end/pad token. η = 1 gives DDPM-like posterior noise (DiffuSeq samples ancestrally over respaced steps);
η = 0 is deterministic DDIM. Clamping (DiffuSeq's `denoised_fn_round`, on by default there) snaps ŷ0 to the
embedding lattice so the recursion stays near real words.

One `lax.scan` inside `jax.jit`: one compiled program per input shape, no host round-trip per step. Noise
comes from `ldlg.methods.gaussian.noise.batch_normal`, so a batch sharded over devices (each device passing
its `example_offset` and the static `global_batch`) draws exactly what one device draws for the whole batch.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from ldlg.methods.gaussian.noise import batch_normal
from ldlg.methods.gaussian.samplers import update_coefficients
from ldlg.methods.gaussian.schedules import Schedule
from ldlg.methods.seq2seq import rounding
from ldlg.methods.seq2seq.losses import positions
from ldlg.methods.seq2seq.network import Seq2SeqDenoiser

SampleFn = Callable[..., dict[str, jax.Array]]


def make_sampler(network: Seq2SeqDenoiser, schedule: Schedule, *, pad_id: int,
                 stop_ids: Sequence[int] | None = None, num_steps: int = 200, eta: float = 1.0,
                 clamp: bool = True, rounding_rule: str = "logits", learn_padding: bool = True,
                 return_trajectory: bool = False) -> SampleFn:
  """Builds the jitted DiffuSeq sampler.

  Args:
    network: the trained `Seq2SeqDenoiser`.
    schedule: the training schedule (concrete), T steps.
    pad_id: the pad token (written outside the kept target; always a stop token).
    stop_ids: further ids that end the text (the end / separator token); pad_id is always added.
    num_steps: S <= T network evaluations, strided evenly over [0, T-1].
    eta: DDIM's η (1 = DDPM-like noise, 0 = deterministic).
    clamp: snap each step's ŷ0 (target positions) to the nearest embedding row.
    rounding_rule: "logits" or "nearest", for the final tokens (see `rounding.py`).
    learn_padding: as the loss's: True = every non-source position is generated (length comes from the pad
      tokens the model writes); False = only positions with mask True.
    return_trajectory: also return z after every step.

  Returns:
    sample(params, rng, input_ids, source_mask, mask=None, example_offset=0, global_batch=None) -> dict
      params: the network parameters;
      rng: PRNG key (the same on every device);
      input_ids: [b, L] int, the source (and separator) at source positions; other positions are ignored;
      source_mask: [b, L] bool, True on source positions;
      mask: [b, L] bool positions in play when learn_padding is False (None = all);
      example_offset, global_batch (static): this shard's place in a global batch (see `batch_normal`);
    with "embeddings" [b, L, d] the final ŷ0 (source positions = EMB(source)), "tokens" [b, L] the rounded
    target ids with pad_id outside the kept span, "lengths" [b] the kept target lengths, and with
    return_trajectory "trajectory" [S, b, L, d] the anchored z after each step (step 0 first).
  """
  coefs = update_coefficients(schedule, "ddim", num_steps, eta)
  stops = tuple(sorted({int(pad_id), *(int(s) for s in (stop_ids or ()))}))
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  xs = {"step": jnp.arange(num_steps), "t": jnp.asarray(coefs["t"], jnp.int32), "a": f32(coefs["a"]),
        "b": f32(coefs["b"]), "sigma": f32(coefs["sigma"])}

  @functools.partial(jax.jit, static_argnames=("global_batch",))
  def sample(params: Any, rng: jax.Array, input_ids: jax.Array, source_mask: jax.Array,
             mask: jax.Array | None = None, example_offset=0, global_batch: int | None = None):
    if input_ids.ndim != 2 or source_mask.shape != input_ids.shape or source_mask.dtype != jnp.bool_:
      raise ValueError(f"input_ids must be [b, L] and source_mask bool [b, L]; got {input_ids.shape}, "
                       f"{source_mask.dtype} {source_mask.shape}")
    if mask is None:
      mask = jnp.ones_like(source_mask)
    variables = {"params": params}
    embedding = params["word_embedding"]
    active, target = positions(source_mask, mask, learn_padding)
    src = source_mask[..., None]
    x_src = network.apply(variables, jnp.where(source_mask, input_ids, pad_id).astype(jnp.int32),
                          method=Seq2SeqDenoiser.embed)
    x_src = jnp.where(src, x_src, 0.0)
    shape = x_src.shape
    # The source is copied from x_src (never recomputed), so it is bit-identical at every step.
    anchor = lambda z: jnp.where(src, x_src, jnp.where(target[..., None], z, 0.0))
    noise = lambda key: batch_normal(key, shape, example_offset, global_batch)
    k_init, k_steps = jax.random.split(rng)
    z = anchor(noise(k_init))

    def step(z, x):
      t = jnp.full(shape[:1], x["t"], jnp.int32)
      x0 = network.apply(variables, z, t, active, source_mask)
      if clamp:
        x0 = rounding.nearest_embedding(x0, embedding)
      x0 = anchor(x0)
      z = anchor(x["a"] * x0 + x["b"] * z + x["sigma"] * noise(jax.random.fold_in(k_steps, x["step"])))
      return z, (z if return_trajectory else None)

    z, trajectory = jax.lax.scan(step, z, xs)
    tokens = rounding.round_to_tokens(z, embedding, rounding_rule)
    tokens, lengths = rounding.truncate_at_stop(tokens, target, stops, pad_id)
    out = {"embeddings": z, "tokens": tokens, "lengths": lengths}
    if return_trajectory:
      out["trajectory"] = trajectory
    return out

  return sample
