"""The masked-diffusion Method: registry and config, pmap = single device, the evaluation hook's NELBO."""
import jax
import jax.flatten_util
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ldlg.engine.parallel import AXIS
from ldlg.methods.base import METHODS
from ldlg.methods.masked import MaskedDiffusion

V, MASK, PAD, BOS, EOS = 9, 4, 1, 0, 2
NETWORK = dict(dim=16, num_layers=1, num_heads=2, ff_mult=2)


def random_params(method, scale=0.5, zero_output=False):
  """Parameters of the method's structure from one normal draw (flax's init would compile one random program per
  parameter); `zero_output` zeroes the output layer, as the real init does, so the prediction is uniform."""
  shapes = jax.eval_shape(method.init_params, jax.random.PRNGKey(0))
  flat, unravel = jax.flatten_util.ravel_pytree(jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes))
  params = unravel(scale * jax.random.normal(jax.random.PRNGKey(1), flat.shape))
  if zero_output:
    params["output_proj"] = jax.tree_util.tree_map(jnp.zeros_like, params["output_proj"])
  return params


def framed_batch(lengths, width, seed=0):
  """<s> text </s> <pad>... rows of the given total lengths (text tokens drawn from 5..V-1)."""
  rng = np.random.default_rng(seed)
  ids = np.full((len(lengths), width), PAD, np.int32)
  for row, n in enumerate(lengths):
    ids[row, :n] = [BOS, *rng.integers(5, V, size=n - 2), EOS]
  return {"input_ids": ids, "mask": ids != PAD}


def test_registry_and_from_config():
  assert METHODS.get("masked") is MaskedDiffusion
  config = ml_collections.ConfigDict({
      "method": {"name": "masked", "schedule": "cosine", "eps": 0.0, "num_timesteps": 10, "label_dropout": 0.2},
      "model": {**NETWORK, "max_len": 12, "num_classes": 3}})
  info = {"vocab_size": V, "mask_id": MASK, "pad_id": PAD, "bos_id": BOS}
  method = MaskedDiffusion.from_config(config, info)
  assert (method.mask_id, method.pad_id, method.bos_id, method.max_len) == (MASK, PAD, BOS, 12)
  assert method.schedule.kind == "cosine" and method.num_classes == 3
  assert method.batch_fields == ("input_ids", "mask", "label")
  config.method.count_bos = True
  assert MaskedDiffusion.from_config(config, info).bos_id is None
  config.method.typo = 1
  with pytest.raises(ValueError, match="typo"):
    MaskedDiffusion.from_config(config, info)
  with pytest.raises(ValueError, match="differ"):
    MaskedDiffusion(vocab_size=V, mask_id=PAD, pad_id=PAD, max_len=8)


@pytest.mark.slow
def test_pmapped_step_equals_single_device_step():
  assert jax.local_device_count() >= 2, "conftest.py should force 2 host CPU devices"
  method = MaskedDiffusion(vocab_size=V, mask_id=MASK, pad_id=PAD, bos_id=BOS, max_len=8,
                           network=dict(NETWORK, num_classes=2), label_dropout=0.3)
  params = random_params(method)
  batch = framed_batch([8, 3, 5, 6, 4, 8, 7, 3], 8)
  batch["label"] = np.array([0, 1, 1, 0, 1, 0, 0, 1], np.int32)
  rng = jax.random.PRNGKey(7)
  grad_fn = jax.value_and_grad(method.loss_fn, has_aux=True)

  (loss, metrics), grads = jax.jit(grad_fn)(params, rng, dict(batch, example_index=np.arange(8)))

  def device_step(params, local, rng):
    index = jax.lax.axis_index(AXIS) * 4 + jnp.arange(4)
    (loss, metrics), grads = grad_fn(params, rng, dict(local, example_index=index))
    return jax.lax.pmean((loss, metrics, grads), AXIS)

  sharded = jax.tree_util.tree_map(lambda x: x.reshape((2, 4) + x.shape[1:]), batch)
  p_loss, p_metrics, p_grads = jax.device_get(
      jax.pmap(device_step, axis_name=AXIS, in_axes=(None, 0, None))(params, sharded, rng))
  loss, metrics, grads = jax.device_get((loss, metrics, grads))
  assert 0 < metrics["null_label_frac"] < 1 and 0 < metrics["masked_frac"] < 1
  for dev in range(2):
    np.testing.assert_allclose(p_loss[dev], loss, rtol=1e-5)
    for key in metrics:
      np.testing.assert_allclose(p_metrics[key][dev], metrics[key], rtol=1e-5, err_msg=key)
    jax.tree_util.tree_map(lambda a, s: np.testing.assert_allclose(a[dev], s, rtol=1e-4, atol=1e-7),
                           p_grads, grads)
  assert max(float(np.abs(g).max()) for g in jax.tree_util.tree_leaves(grads)) > 0


def test_evaluation_hook_nelbo_of_uniform_prediction():
  # A zero output layer predicts the uniform distribution over the V - 1 non-mask tokens. With ε = 0 the T-step
  # NELBO of a sequence of L modelled positions is then L log(V - 1) in expectation (Σ_i (α_{s_i} - α_{t_i}) = 1);
  # pads are modelled (pad_in_loss) but the per-token count is the real tokens without <s>.
  method = MaskedDiffusion(vocab_size=V, mask_id=MASK, pad_id=PAD, bos_id=BOS, max_len=8, network=NETWORK,
                           eps=0.0, num_timesteps=4)
  params = random_params(method, zero_output=True)
  lengths = [3, 8, 5, 4, 6, 3, 7, 4] * 4
  batches = [framed_batch(lengths[:16], 8, seed=1), framed_batch(lengths[16:], 8, seed=2)]
  scored = sum(n - 1 for n in lengths)
  expected = len(lengths) * 8 * np.log(V - 1) / scored
  hook = method.evaluation_hooks()["nelbo"]
  runs = [hook(params, batches, jax.random.PRNGKey(i), num_repeats=4) for i in range(8)]
  values = np.array([r["nelbo_per_token"] for r in runs])
  se = values.std(ddof=1) / np.sqrt(len(values))
  assert se < 0.03 * expected
  assert abs(values.mean() - expected) < 4 * se
  assert runs[0]["num_tokens"] == scored and runs[0]["num_sequences"] == len(lengths)
  np.testing.assert_allclose(runs[0]["perplexity_bound"], np.exp(runs[0]["nelbo_per_token"]), rtol=1e-12)
  # Every position costs log(V - 1) in expectation, so the padding positions' share is their share of positions.
  padding_share = np.mean([r["padding_share"] for r in runs])
  assert abs(padding_share - sum(8 - n for n in lengths) / (8 * len(lengths))) < 0.03


def test_token_transformer_ignores_tokens_outside_the_key_mask():
  method = MaskedDiffusion(vocab_size=V, mask_id=MASK, pad_id=PAD, max_len=8, network=dict(NETWORK, num_classes=2))
  params = random_params(method)
  apply = jax.jit(lambda p, tokens, mask: method.model.apply({"params": p}, tokens, mask, None, jnp.array([0, 2])))
  tokens = jnp.array([[0, 5, 6, 7, 2, 1, 1, 1], [0, 8, 4, 2, 1, 1, 1, 1]])
  mask = tokens != PAD
  other = jnp.where(mask, tokens, 6)  # different tokens where the key mask is False
  a, b = np.asarray(apply(params, tokens, mask)), np.asarray(apply(params, other, mask))
  assert a.shape == (2, 8, V)
  np.testing.assert_allclose(a[np.asarray(mask)], b[np.asarray(mask)], rtol=1e-5, atol=1e-6)
  assert not np.allclose(a[~np.asarray(mask)], b[~np.asarray(mask)])  # the masked positions' own inputs differ
