"""Denoiser parameters for gradient tests: initialised, then moved off the zero-initialised output layer."""
import functools

import jax
import jax.numpy as jnp
import numpy as np


def perturbed_denoiser_params(model, batch: dict, rng: jax.Array, scale: float = 0.05):
  """`model.init` on `batch` ({"latents" [B, L, d], "mask" [B, L], "label" [B]}), plus scale·N(0, 1) on every leaf.

  The denoiser's output layer starts at zero, so without the perturbation most parameters get no gradient and a
  gradient comparison would hold trivially.
  """
  b = batch["latents"].shape[0]
  params = init_params(model, rng, batch["latents"], jnp.zeros((b,), jnp.int32), batch["mask"], batch["latents"],
                       jnp.ones((b,), bool), batch["label"])
  return perturbed(params, scale=scale)


@functools.partial(jax.jit, static_argnums=0)
def init_params(model, rng, *args):
  """`model.init(rng, *args)["params"]` under jit: op by op, even a tiny transformer's init takes ~25 s on 2 loaded
  cores."""
  return model.init(rng, *args)["params"]


def perturbed(params, seed: int = 1, scale: float = 0.2):
  """`params` plus scale·N(0, 1) on every leaf, so no path of a zero-initialised head is a no-op.

  The noise is drawn by NumPy on the host: with jax.random every leaf shape is one more compiled program, drawn
  eagerly or jitted (about 10 s per new parameter tree on 2 loaded cores, against milliseconds here).
  """
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: p + jnp.asarray(scale * rng.standard_normal(p.shape), p.dtype), params)
