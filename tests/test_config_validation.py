"""validate_config: every shipped config passes; each bad value is caught, naming the field and the fix."""

import importlib
import pathlib

import ml_collections
import pytest

from ldlg import config_validation as cv
from ldlg.data import datasets

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
BART_BASE_POSITIONS = 1024  # facebook/bart-base's max_position_embeddings (configs that do not pretrain)


def all_configs():
  """(name, variant) for every configs/*.py and each variant it accepts (it raises on unknown ones)."""
  out = []
  for path in sorted(CONFIG_DIR.glob("*.py")):
    if path.stem == "__init__":
      continue
    module = importlib.import_module(f"configs.{path.stem}")
    out.append((path.stem, None))
    for variant in ("cpu", "ar_cpu", "mdlm_cpu", "cpu_official_v1", "cpu_later", "ar", "mdlm"):
      try:
        module.get_config(variant)
      except ValueError:
        continue
      out.append((path.stem, variant))
  return out


def unlinked(name, variant=None):
  """The config with every linked field resolved to a plain value, so one field can be set alone."""
  config = importlib.import_module(f"configs.{name}").get_config(variant)
  return ml_collections.ConfigDict(config.to_dict())


@pytest.mark.parametrize("name,variant", all_configs())
def test_every_config_validates_and_decodes_within_its_positions(name, variant):
  config = importlib.import_module(f"configs.{name}").get_config(variant)
  cv.validate_config(config)
  if "autoencoder" not in config:  # Token-level methods (AR, MDLM): their positions cover data.max_length.
    positions = config.model.get("n_positions", config.model.get("max_len"))
    assert config.data.max_length <= positions
    return
  positions = (config.autoencoder.max_position_embeddings if config.autoencoder.pretrain
               else BART_BASE_POSITIONS)
  assert config.autoencoder.max_decode_length <= positions
  assert config.data.max_length <= positions


def test_all_configs_covers_each_file_and_the_cpu_variants():
  found = all_configs()
  assert {n for n, _ in found} == {p.stem for p in CONFIG_DIR.glob("*.py")} - {"__init__"}
  assert {("rocstories", "cpu"), ("sst", "ar_cpu"), ("sst", "mdlm_cpu"), ("tiny", "mdlm")} <= set(found)


@pytest.mark.parametrize("name", ["e2e", "rocstories", "sst", "ag_news"])
def test_dataset_configs_link_length_and_class_count(name):
  config = importlib.import_module(f"configs.{name}").get_config("cpu")
  assert config.model.num_classes == datasets.DATASETS[name].num_classes
  config.data.max_length = 40
  assert config.model.max_len == 40 and config.autoencoder.max_decode_length == 41
  assert config.autoencoder.max_decode_length <= config.autoencoder.max_position_embeddings
  cv.validate_config(config)


BAD_VALUES = [
    # (config[:variant], field set to value, words the message must hold besides "config.<field>=<value>")
    ("default", "optim.lr", 0.0, "> 0"),
    ("default", "optim.b2", 1.0, "[0.0, 1.0)"),
    ("default", "diffusion.self_condition_prob", 1.5, "[0.0, 1.0]"),
    ("default", "diffusion.label_dropout", -0.1, "[0.0, 1.0]"),
    ("default", "train.ema_decay", 2.0, "[0.0, 1.0]"),
    ("default", "diffusion.num_timesteps", 0, ">= 1"),
    ("default", "train.batch_size", 0, ">= 1"),
    ("default", "sample.batch_size", 0, ">= 1"),
    ("default", "sample.num_samples", 0, ">= 1"),
    ("default", "sample.num_steps", 0, "[1, config.diffusion.num_timesteps=1000]"),
    ("default", "sample.num_steps", 1001, "[1, config.diffusion.num_timesteps=1000]"),
    ("default", "sample.eta", -1.0, ">= 0"),
    ("default", "diffusion.schedule", "quadratic", "'linear', 'cosine', 'sqrt'"),
    ("default", "diffusion.objective", "score", "'x0', 'eps', 'v'"),
    ("default", "diffusion.loss_type", "huber", "'l2', 'l1'"),
    ("default", "sample.sampler", "euler", "'ddim', 'ddpm'"),
    ("default", "model.dtype", "float16", "'float32', 'bfloat16'"),
    ("default", "autoencoder.dtype", "int8", "'float32'"),
    ("default", "data.latent_dtype", "int8", "'float16', 'bfloat16', 'float32'"),
    ("default", "optim.schedule", "step", "'cosine', 'constant'"),
    ("default", "eval.featurizer", "", "'auto', 'minilm'"),
    ("default", "eval.likelihood_rtol", 0.0, "a number in (0.0, 1.0)"),
    ("default", "eval.likelihood_examples", -1, "an integer >= 0"),
    ("default", "data.name", "imdb", "ag_news"),
    ("default", "data.eval_split", "dev2", "a split of e2e"),
    ("default", "model.max_len", 32, ">= config.data.max_length=64"),
    ("default", "model.num_timesteps", 500, "equal to config.diffusion.num_timesteps=1000"),
    ("default", "model.num_classes", 2, "0: e2e has no class labels"),
    ("default", "sample.class_id", 0, "-1 on an unconditional model"),
    ("default", "autoencoder.min_decode_length", 100, "<= config.autoencoder.max_decode_length=65"),
    ("sst", "model.num_classes", 3, "2 (the classes of sst) or 0"),
    ("sst", "sample.class_id", 3, "[-1, 2]"),
    ("e2e:cpu", "autoencoder.max_decode_length", 200, "<= config.autoencoder.max_position_embeddings=128"),
    ("e2e:cpu", "model.latent_dim", 64, "equal to config.autoencoder.d_model=128"),
    ("e2e:cpu", "autoencoder.mask_ratio", 1.2, "[0.0, 1.0]"),
    ("e2e:cpu", "autoencoder.attention_heads", 3,
     "config.autoencoder.d_model=128: must be a multiple of config.autoencoder.attention_heads=3"),
]


@pytest.mark.parametrize("config_name,field,value,words", BAD_VALUES)
def test_each_bad_value_is_caught_naming_the_field(config_name, field, value, words):
  config = unlinked(*config_name.split(":"))
  section, key = field.split(".")
  config[section][key] = value
  with pytest.raises(cv.ConfigError) as err:
    cv.validate_config(config)
  message = str(err.value)
  assert f"config.{field}={value!r}" in message and words in message and "Fix: " in message
  assert isinstance(err.value, ValueError)


def test_every_problem_is_listed_at_once():
  config = unlinked("sst")
  config.optim.lr = -1.0
  config.sample.sampler = "euler"
  config.model.max_len = 8
  with pytest.raises(cv.ConfigError, match="3 problems in the config") as err:
    cv.validate_config(config)
  assert sorted(p.field for p in err.value.problems) == ["model.max_len", "optim.lr", "sample.sampler"]


def test_valid_edge_values_pass():
  config = unlinked("sst")
  config.sample.class_id = 2  # the null class: unconditional samples from a conditional model
  config.sample.num_steps = config.diffusion.num_timesteps
  config.diffusion.label_dropout = 0.0
  config.optim.grad_clip = 0.0  # no clipping
  cv.validate_config(config)


def test_unknown_sections_and_other_methods_do_not_break_it():
  config = unlinked("e2e")
  config.mdlm = ml_collections.ConfigDict({"antithetic": True, "weird": -5})
  config.model.new_knob = "x"
  del config.eval
  cv.validate_config(config)
  config.diffusion.schedule = "loglinear"  # not a Gaussian schedule: wrong for this method...
  with pytest.raises(cv.ConfigError, match="config.diffusion.schedule='loglinear'"):
    cv.validate_config(config)
  config.method = "mdlm"  # ...but another method's choices are that method's own checks
  cv.validate_config(config)


def test_a_method_can_register_its_own_check():
  def mdlm_check(c):
    if c.get("method") == "mdlm":
      c.number("mdlm.eps", lo=0.0, hi=1.0, lo_open=True)

  cv.register_check(mdlm_check)
  try:
    config = unlinked("e2e")
    config.method = "mdlm"
    config.mdlm = ml_collections.ConfigDict({"eps": 0.0})
    with pytest.raises(cv.ConfigError, match=r"config.mdlm.eps=0.0: must be a number in \(0.0, 1.0\]"):
      cv.validate_config(config)
  finally:
    cv.CHECKS.remove(mdlm_check)
