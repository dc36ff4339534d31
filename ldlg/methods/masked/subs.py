"""The SUBS parameterization of the masked denoiser x_θ(z_t) ∈ Δ^V (MDLM, Sahoo et al. 2024, Sec. 3.2).

Two substitutions turn raw network logits into a distribution over clean tokens:
1. zero masking probability: the logit of the mask token is -inf, so x_θ puts exactly 0 mass on it (the clean
   data never contains the mask);
2. carry-over unmasking: where z_t is not the mask, x_θ is exactly the one-hot of z_t (an unmasked token is
   already the clean token under absorbing noise).

Work in log-probabilities: -inf is exact zero probability, and `jax.random.categorical` samples from it.
Split in two steps (`denoiser_log_probs`, then `carry_over`) so that classifier-free guidance can combine the
conditional and unconditional predictions before the carry-over.
"""
import jax
import jax.numpy as jnp


def denoiser_log_probs(logits: jax.Array, mask_id: int) -> jax.Array:
  """Step 1: log-softmax of the logits with the mask token's logit set to -inf.

  Args:
    logits: [..., V] raw network outputs.
    mask_id: id of the mask token in [0, V).

  Returns:
    [..., V] float32 log-probabilities; column mask_id is -inf, the others are finite.
  """
  logits = logits.astype(jnp.float32)
  is_mask = jnp.arange(logits.shape[-1]) == mask_id
  return jax.nn.log_softmax(jnp.where(is_mask, -jnp.inf, logits), axis=-1)


def carry_over(log_probs: jax.Array, z_t: jax.Array, mask_id: int) -> jax.Array:
  """Step 2: at unmasked positions replace the distribution by the one-hot of the input token.

  Args:
    log_probs: [..., L, V] log-probabilities (from `denoiser_log_probs`, or a guided combination).
    z_t: [..., L] int token ids, mask_id where masked.
    mask_id: the mask token id.

  Returns:
    [..., L, V]: log_probs at masked positions; 0 at z_t and -inf elsewhere at the others.
  """
  one_hot = jnp.where(jnp.arange(log_probs.shape[-1]) == z_t[..., None], 0.0, -jnp.inf)
  return jnp.where((z_t == mask_id)[..., None], log_probs, one_hot)


def subs_log_probs(logits: jax.Array, z_t: jax.Array, mask_id: int) -> jax.Array:
  """log x_θ(z_t): both SUBS substitutions applied to raw logits [..., L, V] given the input z_t [..., L]."""
  return carry_over(denoiser_log_probs(logits, mask_id), z_t, mask_id)
