"""What a method is: the contract between a way of modelling text and the shared engine.

A method (Gaussian latent diffusion, masked diffusion, DiffuSeq, the autoregressive baseline) owns its network,
its loss and its samplers; the engine (`ldlg.engine`) owns training, checkpoints and sharded sampling and
never imports a method. Register a method with `@METHODS.register("name")`; `ldlg.methods.build(config, ...)`
is the one place it is built from a config.

Batches. The engine hands `loss_fn` one device's share of a global batch: a dict of arrays whose first axis
is the example, always with `example_index` [b] (the examples' positions in the *global* batch). Every
per-example random choice is keyed on that index (`per_example_keys`), so a step split over devices draws
exactly what one device would draw for the whole batch: pmap = single device, and resume = uninterrupted run.
Global quantities (a token count, the batch size) come from `ldlg.engine.parallel.global_sum`.

Conditioning travels as one `cond` pytree (a dict: "class_id" [B], "source" [B, S, Ds] + "source_mask" [B, S]
...), never as more positional arguments; the Gaussian method's is defined in `methods/gaussian/condition.py`.
"""

import abc
from typing import Any, Callable, ClassVar, Mapping

import jax
import jax.numpy as jnp

from ldlg.engine.registry import Registry

Batch = Mapping[str, jax.Array]
LossFn = Callable[[Any, jax.Array, Batch], tuple[jax.Array, dict[str, jax.Array]]]

METHODS = Registry("method")


def per_example_keys(rng: jax.Array, example_index: jax.Array, num: int) -> jax.Array:
  """Per-example keys: split(fold_in(rng, example_index[i]), num).

  Args:
    rng: a PRNG key shared by every device of a step.
    example_index: [B] int, the examples' global indices.
    num: number of independent streams per example.

  Returns:
    [num, B] keys (stream first, so `keys[k]` is a [B] batch of keys).
  """
  keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(rng, i), num))(example_index)
  return jnp.swapaxes(keys, 0, 1)


class Method(abc.ABC):
  """One way of modelling text. Subclasses set `name` and `batch_fields` and implement the methods below."""

  name: ClassVar[str] = ""
  # Keys `loss_fn` reads from a batch (besides example_index); the engine checks the data provides them.
  batch_fields: ClassVar[tuple[str, ...]] = ()

  @abc.abstractmethod
  def init_params(self, rng: jax.Array) -> Any:
    """The network's initial parameters."""

  @abc.abstractmethod
  def loss_fn(self, params: Any, rng: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Pure and jit-able: (loss [], metrics {name: []}) on one device's share of a global batch.

    The engine averages gradients and metrics over devices (`lax.pmean`), so a loss must be written so that
    the mean of the per-device values is the global loss (equal-weight example means are; a token mean
    divides by `global_sum(count)` and multiplies by the device count, see the autoregressive method).
    """

  def eval_loss_fn(self, params: Any, rng: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The loss without training-only randomness (dropout off); defaults to `loss_fn`."""
    return self.loss_fn(params, rng, batch)

  @staticmethod
  def stages() -> tuple:
    """The run's stages in order (ldlg.engine.stage.Stage): what `--mode=pipeline` runs for this method."""
    raise NotImplementedError

  @staticmethod
  def likelihood_metrics(config, workdir, data_dir) -> dict:
    """Likelihood figures `--mode=evaluate` adds to metrics.json (e.g. {"likelihood": {...}}); none by default."""
    return {}

  @classmethod
  def token_nll(cls, config, workdir, data_dir, step: int = -1) -> dict:
    """The eval split's negative log-likelihood per token under the checkpoint of `step` (-1: the latest).

    For the methods that model tokens (the AR baseline: exact; masked diffusion: its NELBO, an upper bound), all
    on the same tokens of one tokenizer (each text and its </s>; <s> is given, not scored), so two runs that
    share a tokenizer compare number for number. Returns {"nll_per_token", "perplexity", "exact", ...}.
    """
    raise NotImplementedError(f"the {cls.name} method has no likelihood per token (only the autoregressive and "
                              "masked methods model tokens directly)")

  @staticmethod
  def checkpoint_steps(config, workdir) -> list[int]:
    """The steps of the run's kept training checkpoints, in increasing order ([] before any)."""
    del config
    from ldlg.engine import checkpoints  # pylint: disable=import-outside-toplevel
    if not workdir.checkpoint_dir.is_dir():
      return []
    ckpt = checkpoints.Checkpointer(workdir.checkpoint_dir)
    try:
      return sorted(ckpt.all_steps())
    finally:
      ckpt.close()

  def evaluation_hooks(self) -> Mapping[str, Callable[..., dict]]:
    """Extra evaluations `--mode=evaluate` reports for this method (e.g. a likelihood bound), by name."""
    return {}
