"""What the Gaussian method's denoiser is conditioned on, as one pytree `cond`.

The losses, samplers, ODE solvers and likelihoods pass `cond` through untouched; only the few places that
change it (label / source dropout in training, the doubled batch of classifier-free guidance, per-example vmaps)
use the functions here, so adding a kind of conditioning touches this file and the network, not every sampler.

`cond` is None (unconditional) or a dict with any of
  "class_id":    [B] int in [0, C]; C = the null class (the model's `num_classes`);
  "source":      [B, S, Ds] float, a source sequence's encoding (sequence-to-sequence: the frozen BART
                 encoder's states of the source text), cross-attended by the denoiser;
  "source_mask": [B, S] bool, True = a valid source position. An all-False row is the *null source*: the
                 denoiser then sees no source at all (source dropout in training, the unconditional half of
                 guidance at sampling).
A bare [B] int array is short for {"class_id": array} (the class-only call every sampler has always taken).
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

Cond = Optional[dict]
KEYS = ("class_id", "source", "source_mask")


def as_dict(cond: Any) -> Cond:
  """cond as a dict (or None), with class_id int32 and source_mask bool; a bare array is a class id."""
  if cond is None:
    return None
  if not isinstance(cond, dict):
    cond = {"class_id": cond}
  unknown = set(cond) - set(KEYS)
  if unknown:
    raise ValueError(f"unknown conditioning fields {sorted(unknown)}; a cond dict holds {KEYS}")
  if ("source" in cond) != ("source_mask" in cond):
    raise ValueError("cond needs 'source' and 'source_mask' together (the mask says which positions are real)")
  out = dict(cond)
  if "class_id" in out:
    out["class_id"] = jnp.asarray(out["class_id"]).astype(jnp.int32)
  if "source_mask" in out:
    out["source_mask"] = jnp.asarray(out["source_mask"]).astype(jnp.bool_)
  return out


def check(cond: Any, batch: int) -> Cond:
  """`as_dict`, and every field's leading axis is the batch: a message naming the field otherwise."""
  cond = as_dict(cond)
  if cond is None:
    return None
  if "class_id" in cond and cond["class_id"].shape != (batch,):
    raise ValueError(f"class_id must be [B] = ({batch},), got shape {cond['class_id'].shape}")
  if "source" in cond:
    source, source_mask = cond["source"], cond["source_mask"]
    if source.ndim != 3 or source.shape[0] != batch or source_mask.shape != source.shape[:2]:
      raise ValueError(f"source must be [B={batch}, S, Ds] with source_mask [B, S]; got {source.shape} and "
                       f"{source_mask.shape}")
  return cond


def null(cond: Cond, num_classes: int) -> Cond:
  """The same batch with no conditioning: every class id the null class, every source the null source."""
  cond = as_dict(cond)
  if cond is None:
    return None
  out = dict(cond)
  if "class_id" in out:
    if num_classes <= 0:
      raise ValueError("the null class needs the model's num_classes (> 0): pass num_classes, or leave "
                       "class_id out of cond for a model without classes")
    out["class_id"] = jnp.full_like(out["class_id"], num_classes)
  if "source_mask" in out:
    out["source_mask"] = jnp.zeros_like(out["source_mask"])
  return out


def drop(cond: Cond, dropped: dict[str, jax.Array], num_classes: int) -> Cond:
  """Per-example dropout: rows where `dropped[field]` ([B] bool) is True get that field's null value.

  dropped: {"class_id": [B] bool, "source": [B] bool}, either key optional.
  """
  cond = as_dict(cond)
  if cond is None:
    return None
  out = dict(cond)
  nulled = null(cond, num_classes)
  if "class_id" in out and "class_id" in dropped:
    out["class_id"] = jnp.where(dropped["class_id"], nulled["class_id"], out["class_id"])
  if "source_mask" in out and "source" in dropped:
    out["source_mask"] = jnp.where(dropped["source"][:, None], nulled["source_mask"], out["source_mask"])
  return out


def with_null(cond: Cond, num_classes: int) -> Cond:
  """[cond ; null(cond)] along the batch: the doubled batch of classifier-free guidance (rows B.. are null)."""
  cond = as_dict(cond)
  if cond is None:
    return None
  return jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=0), cond, null(cond, num_classes))


def add_batch_axis(cond: Cond) -> Cond:
  """One example's cond (every field without its batch axis, e.g. inside a per-example vmap) as a batch of 1."""
  return None if cond is None else jax.tree.map(lambda x: x[None], as_dict(cond))


def module_kwargs(cond: Any) -> dict[str, jax.Array]:
  """The Denoiser's keyword arguments for this cond: class_id=, source=, source_mask= (absent ones left out)."""
  cond = as_dict(cond)
  return {} if cond is None else dict(cond)


def guided_output(denoise_fn: Any, params: Any, z: jax.Array, t: jax.Array, mask: jax.Array,
                  self_cond: Optional[jax.Array], has_self_cond: Optional[jax.Array], cond: Cond, rng: jax.Array,
                  guidance_scale: float, num_classes: int) -> jax.Array:
  """The network output with classifier-free guidance, w·f(cond) + (1-w)·f(null(cond)), from one call on the
  doubled batch (w = guidance_scale; w = 1 or cond None: one plain call). Arguments as in `DenoiseFn`
  (dropout off); returns [B, L, D] in the objective's parameterization."""
  if guidance_scale == 1.0 or cond is None:
    return denoise_fn(params, z, t, mask, self_cond, has_self_cond, cond, False, rng)
  batch = z.shape[0]
  two = lambda x: None if x is None else jnp.concatenate([x, x], axis=0)
  out = denoise_fn(params, two(z), two(t), two(mask), two(self_cond), two(has_self_cond),
                   with_null(cond, num_classes), False, rng)
  return guidance_scale * out[:batch] + (1.0 - guidance_scale) * out[batch:]


def check_guidance(guidance_scale: float, num_classes: int, source_conditioned: bool) -> None:
  """Guidance (w != 1) needs something to contrast with a null: classes (num_classes > 0) or a source."""
  if guidance_scale != 1.0 and num_classes <= 0 and not source_conditioned:
    raise ValueError(f"guidance_scale={guidance_scale} needs a conditional model: pass num_classes (> 0) so "
                     "the null class id is known, or source_conditioned=True, or set guidance_scale=1")
