"""Speed options of the denoiser's layers compute the same function: jax.nn.dot_product_attention, remat."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldlg.networks.attention import Attention
from ldlg.networks.blocks import DenoiserBlock

B, L, D, H = 3, 6, 16, 2


def _inputs(seed=0):
  k = jax.random.split(jax.random.PRNGKey(seed), 5)
  mask = jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], bool)  # last row: all padding
  memory_mask = jnp.concatenate([mask, jnp.ones((B, 1), bool)], axis=1)  # memory = [estimate; class token]
  return dict(h=jax.random.normal(k[0], (B, L, D)), mask=mask, rel_bias=jax.random.normal(k[1], (1, H, L, L)),
              memory=jax.random.normal(k[2], (B, L + 1, D)), memory_mask=memory_mask,
              time_act=jax.random.normal(k[3], (B, 8)))


def _close(a, b, tol):
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(np.asarray(x, np.float32),
                                                                  np.asarray(y, np.float32), rtol=tol, atol=tol), a, b)


@pytest.mark.slow
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)])
def test_dot_product_attention_equals_the_plain_path(dtype, tol):
  """Self-attention with the T5 bias and a padding mask (one row all padding), and cross-attention to a memory
  whose valid entries are not a prefix: outputs and gradients agree with the hand-written path."""
  x = _inputs()
  for memory, key_mask, bias in ((x["h"], x["mask"], x["rel_bias"]), (x["memory"], x["memory_mask"], None)):
    plain = Attention(H, dtype=dtype)
    fused = Attention(H, dtype=dtype, implementation="xla")
    params = plain.init(jax.random.PRNGKey(1), x["h"], memory, key_mask, bias)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
        fused.init(jax.random.PRNGKey(1), x["h"], memory, key_mask, bias))
    run = lambda m, p: m.apply(p, x["h"], memory, key_mask, bias)
    _close(run(fused, params), run(plain, params), tol)
    loss = lambda m: jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(run(m, p).astype(jnp.float32)))))(params)
    _close(loss(fused), loss(plain), tol)
    # Valid outputs ignore masked keys in both paths.
    poisoned = jnp.where(key_mask[..., None], memory, 1e4)
    out = fused.apply(params, x["h"], poisoned, key_mask, bias)
    _close(out[0], run(fused, params)[0], tol)


def test_dot_product_attention_falls_back_to_the_plain_path_under_dropout():
  x = _inputs()
  args = (x["h"], x["h"], x["mask"], x["rel_bias"])
  params = Attention(H, dropout=0.3).init(jax.random.PRNGKey(1), *args)
  run = lambda impl: Attention(H, dropout=0.3, implementation=impl).apply(
      params, *args, deterministic=False, rngs={"dropout": jax.random.PRNGKey(2)})
  np.testing.assert_array_equal(run("xla"), run("plain"))  # the same dropout masks: the same code ran
  assert not np.allclose(run("plain"), Attention(H).apply(params, *args))  # and dropout was active


@pytest.mark.slow
def test_block_options_keep_the_function_and_the_parameter_tree():
  """remat and attention_impl change how the block runs, not what it computes: same parameter tree, outputs
  and gradients (remat exactly up to float reassociation)."""
  x = _inputs()
  args = tuple(x[k] for k in ("h", "mask", "rel_bias", "memory", "memory_mask", "time_act"))
  base = DenoiserBlock(H)
  params = base.init(jax.random.PRNGKey(1), *args)
  # Move off the zero-initialised AdaLN modulation so every parameter carries gradient.
  params = jax.tree_util.tree_map(lambda p: p + 0.1 * jnp.cos(jnp.arange(p.size).reshape(p.shape)), params)
  value_and_grad = lambda m: jax.jit(jax.value_and_grad(lambda p: jnp.sum(jnp.sin(m.apply(p, *args)))))(params)
  want = value_and_grad(base)
  for options in (dict(remat=True), dict(attention_impl="xla"), dict(remat=True, attention_impl="xla")):
    block = DenoiserBlock(H, **options)
    assert jax.tree_util.tree_structure(block.init(jax.random.PRNGKey(1), *args)) == \
        jax.tree_util.tree_structure(params), options
    _close(value_and_grad(block), want, 1e-5)


def test_remat_block_recomputes_in_the_backward_pass():
  """The remat option reaches the program: the gradient's jaxpr holds a checkpoint (remat) and the plain one not."""
  x = _inputs()
  args = tuple(x[k] for k in ("h", "mask", "rel_bias", "memory", "memory_mask", "time_act"))
  params = DenoiserBlock(H).init(jax.random.PRNGKey(1), *args)
  jaxpr = lambda m: str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(m.apply(p, *args))))(params))
  assert "remat" in jaxpr(DenoiserBlock(H, remat=True)) or "checkpoint" in jaxpr(DenoiserBlock(H, remat=True))
  assert "remat" not in jaxpr(DenoiserBlock(H)) and "checkpoint" not in jaxpr(DenoiserBlock(H))


def test_unknown_attention_implementation_is_refused():
  x = _inputs()
  with pytest.raises(ValueError, match="implementation"):
    Attention(H, implementation="flash").init(jax.random.PRNGKey(0), x["h"], x["h"], x["mask"])
