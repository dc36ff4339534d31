"""Every config file builds, has the documented shape, and its linked fields stay linked after overrides."""

import importlib

import jax
import pytest

from ldlg.methods.gaussian.method import GaussianDiffusion
from ldlg.data import datasets
from ldlg.networks import count_params

CONFIGS = [("default", None), ("tiny", None)] + [(n, v) for n in ("e2e", "rocstories", "sst", "ag_news")
                                                  for v in (None, "cpu")]


@pytest.mark.parametrize("name,variant", CONFIGS)
def test_config_builds_a_model_of_its_data(name, variant):
  config = importlib.import_module(f"configs.{name}").get_config(variant)
  assert config.data.name in datasets.DATASETS
  spec, _ = datasets.get_spec(config.data.name)
  assert config.model.num_classes in (0, spec.num_classes)
  assert config.model.max_len >= config.data.max_length
  assert config.autoencoder.max_decode_length == config.data.max_length + 1
  assert config.train.batch_size % 2 == 0  # Runs on the 2 forced CPU devices of the tests too.
  abstract = GaussianDiffusion.from_config(config).init_params(jax.random.PRNGKey(0), abstract=True)
  assert count_params(abstract) > 0
  doc = importlib.import_module(f"configs.{name}").__doc__
  assert "python -m ldlg" in doc and "Hardware" in doc, f"configs/{name}.py docstring: command and hardware"


def test_paper_defaults():
  config = importlib.import_module("configs.e2e").get_config()
  assert (config.model.dim, config.model.num_layers, config.model.num_heads) == (768, 12, 12)
  assert config.model.latent_dim == 768 and config.autoencoder.name == "facebook/bart-base"
  assert (config.diffusion.schedule, config.diffusion.num_timesteps, config.diffusion.objective) == (
      "linear", 1000, "x0")
  assert (config.sample.sampler, config.sample.num_steps) == ("ddim", 250)
  assert (config.autoencoder.num_beams, config.autoencoder.repetition_penalty,
          config.autoencoder.no_repeat_ngram_size) == (4, 1.2, 3)
  assert config.diffusion.self_condition_prob == 0.5 and config.train.ema_decay == 0.9999


def test_e2e_cpu_variant_samples_with_100_ddim_steps_and_others_keep_250():
  assert importlib.import_module("configs.e2e").get_config("cpu").sample.num_steps == 100
  assert importlib.import_module("configs.sst").get_config("cpu").sample.num_steps == 250


def test_cpu_variant_links_latent_width_to_the_autoencoder():
  config = importlib.import_module("configs.e2e").get_config("cpu")
  config.autoencoder.d_model = 96
  config.data.max_length = 40
  assert config.model.latent_dim == 96 and config.autoencoder.max_length == 40
  assert config.autoencoder.max_decode_length == 41


def test_unknown_variant_is_an_error():
  with pytest.raises(ValueError, match="unknown variant 'gpu'.*:cpu"):
    importlib.import_module("configs.sst").get_config("gpu")


@pytest.mark.parametrize("name", ["e2e", "rocstories", "sst", "ag_news"])
@pytest.mark.parametrize("variant", ["ar_cpu", "mdlm_cpu"])
def test_other_method_variants_build_their_model(name, variant):
  """Every dataset has the AR baseline and masked diffusion as variants; each builds its network at a size
  comparable with the :cpu denoiser (within 20%), and names its method."""
  from ldlg import methods
  from ldlg.methods.gaussian.method import GaussianDiffusion
  config = importlib.import_module(f"configs.{name}").get_config(variant)
  ld4lg = importlib.import_module(f"configs.{name}").get_config("cpu")
  target = count_params(GaussianDiffusion.from_config(ld4lg).init_params(jax.random.PRNGKey(0), abstract=True))
  vocab = config.tokenizer.vocab_size
  if variant == "ar_cpu":
    from ldlg.methods.autoregressive import model as ar_model
    n = ar_model.gpt2_num_params(config.model.n_layer, config.model.n_embd, vocab, config.model.n_positions)
  else:
    from ldlg.methods.masked.method import MaskedDiffusion
    method = MaskedDiffusion.from_config(config, {"vocab_size": vocab, "mask_id": 4, "pad_id": 1, "bos_id": 0})
    n = count_params(jax.eval_shape(method.init_params, jax.random.PRNGKey(0)))
  assert methods.method_name(config) in ("autoregressive", "masked")
  assert 0.8 * target <= n <= 1.2 * target, (variant, n, target)
