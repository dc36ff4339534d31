"""The official-v1 and later-version recipes as config variants: what each sets, that they validate and build,
and that configs which do not ask for them are untouched (no new fields, so saved workdir configs still match)."""
import jax
import pytest

from configs import default, e2e, sst, tiny
from ldlg.config_validation import validate_config
from ldlg.methods.gaussian.method import GaussianDiffusion
from ldlg.networks.denoiser import Denoiser

NEW_MODEL_FIELDS = ("time_input", "noise_schedule", "latent_scale", "self_cond_mode", "unet_skips", "init_scales",
                    "head_dim", "gelu_approximate", "class_input")


@pytest.mark.parametrize("arg", [None, "cpu"])
def test_plain_configs_have_none_of_the_new_fields(arg):
  config = sst.get_config(arg)
  # `:cpu` of a class-conditional dataset has the recipe ablation's class input (configs/default.py,
  # with_class_recipe); a saved config without it reads as the memory token (ADDED_FIELD_DEFAULTS).
  assert set(NEW_MODEL_FIELDS) & set(config.model) == ({"class_input"} if arg else set())
  assert not set(NEW_MODEL_FIELDS) & set(e2e.get_config(arg).model)  # Unconditional: untouched.
  assert "latent_scale" not in config.diffusion
  # Present with the value that reproduces the old behaviour, which a saved config without it matches
  # (ldlg.engine.workdir.ADDED_FIELD_DEFAULTS).
  assert config.diffusion.get("self_condition_mode", "per_example") == "per_example"
  assert "ema_power" not in config.train and "decay_mask" not in config.optim
  assert config.autoencoder.max_decode_length == config.data.max_length + 1


def test_official_v1_recipe():
  config = sst.get_config("cpu_official_v1")
  validate_config(config)
  assert config.model.gelu_approximate is False and config.model.init_scales == "official_v1"
  assert config.model.head_dim == 64 and config.model.dropout == 0.1
  assert (config.diffusion.loss_type, config.diffusion.objective, config.diffusion.schedule) == ("l1", "x0", "linear")
  assert config.diffusion.self_condition_mode == "per_batch" and config.optim.decay_mask == "matrices"
  assert config.train.ema_power == 0.75 and config.autoencoder.max_decode_length == 64
  # v1's class conditioning (a memory token, no guidance), not the `:cpu` default's.
  assert config.model.get("class_input", "memory_token") == "memory_token" and config.sample.guidance_scale == 1.0
  # The CPU sizing is kept: only the recipe's own choices change.
  assert (config.model.dim, config.model.num_layers, config.optim.lr) == (128, 4, 5e-4)
  method = GaussianDiffusion.from_config(config)
  assert method.model.heads == 2
  params = method.init_params(jax.random.PRNGKey(0), abstract=True)
  assert params["rel_pos_bias"]["embedding"].shape == (32, 2)


def test_later_version_recipe_links_the_schedule_into_the_model():
  config = sst.get_config("cpu_later")
  validate_config(config)
  assert (config.diffusion.schedule, config.diffusion.objective) == ("cosine", "v")
  assert config.model.time_input == "alpha_bar" and config.model.self_cond_mode == "concat"
  assert config.model.unet_skips and config.model.unet_skip_count == 2  # min(3, 4 // 2)
  assert config.model.noise_schedule == "cosine" and config.model.class_input == "time"
  config.diffusion.latent_scale = 0.5  # linked: the denoiser's ᾱ table follows the loss's schedule
  assert config.model.latent_scale == 0.5
  method = GaussianDiffusion.from_config(config)
  params = method.init_params(jax.random.PRNGKey(0), abstract=True)
  assert params["input_proj"]["kernel"].shape == (2 * config.model.latent_dim, config.model.dim)
  assert {"skip_proj_0", "skip_proj_1"} <= set(params)
  assert method.schedule.name.startswith("cosine@scale0.5")


def test_paper_size_variants_build_and_tiny_is_untouched():
  for arg in ("official_v1", "later"):
    config = sst.get_config(arg)
    validate_config(config)
    assert Denoiser(**config.model).heads == 12  # 768 / 64
  assert not set(NEW_MODEL_FIELDS) & set(tiny.get_config().model)
  with pytest.raises(ValueError, match="unknown variant 'v2'.*':cpu_later'"):
    sst.get_config("v2")
  assert set(default.VARIANTS) >= {"cpu_official_v1", "cpu_later"}
