"""The layout of a job's working directory, and the config saved in it.

    <workdir>/config.json          the locked config of the first run; later runs must agree with it
    <workdir>/autoencoder/         our own tokenizer + BART, Hugging Face format (offline configs only)
    <workdir>/tfds/                prepared TFDS datasets
    <workdir>/latents/<split>/     latent shards, manifest.json, normalization stats, length histogram
    <workdir>/checkpoints/         Orbax checkpoints of the denoiser's train state
    <workdir>/metrics.jsonl        training metrics, one JSON object per log step (also TensorBoard: tb/)
    <workdir>/samples.jsonl        sampled text, one JSON object per line
    <workdir>/metrics.json         evaluation of the samples (MAUVE, diversity, ...: mean and std over draws)
"""

import dataclasses
import hashlib
import json
import pathlib

import ml_collections

# Bookkeeping fields that do not change what a run computes (how often it logs or saves, how many checkpoints it
# keeps, when it warns): they may change between runs, and the provenance hash leaves them out.
BOOKKEEPING_FIELDS = {"train": ("log_every", "ckpt_every", "keep_checkpoints", "sample_every", "num_log_samples",
                                "divergence_factor", "divergence_patience")}

# Fields that may change between runs in one workdir: they steer how long to run or how to sample, not what
# the model, data or latents are. Everything else must match the saved config.
MUTABLE_FIELDS = ("train.num_steps",
                  *(f"{section}.{field}" for section, fields in BOOKKEEPING_FIELDS.items() for field in fields),
                  "sample.", "eval.", "autoencoder.num_beams",
                  "autoencoder.repetition_penalty", "autoencoder.no_repeat_ngram_size",
                  "autoencoder.length_penalty", "autoencoder.max_decode_length",
                  "autoencoder.min_decode_length",
                  # The decoder fine-tune changes decoding only (encoder frozen): an existing run may take one up.
                  "decoder_finetune.")


@dataclasses.dataclass(frozen=True)
class Workdir:
  root: pathlib.Path

  @property
  def config_file(self) -> pathlib.Path:
    return self.root / "config.json"

  @property
  def autoencoder_dir(self) -> pathlib.Path:
    return self.root / "autoencoder"

  @property
  def decoder_dir(self) -> pathlib.Path:
    """The BART with its decoder fine-tuned on noised latents (`ldlg.codecs.bart.decoder_finetune`)."""
    return self.root / "decoder"

  @property
  def tfds_dir(self) -> pathlib.Path:
    return self.root / "tfds"

  def latents_dir(self, split: str) -> pathlib.Path:
    return self.root / "latents" / split

  @property
  def checkpoint_dir(self) -> pathlib.Path:
    return self.root / "checkpoints"

  @property
  def metrics_file(self) -> pathlib.Path:
    return self.root / "metrics.jsonl"

  @property
  def tensorboard_dir(self) -> pathlib.Path:
    return self.root / "tb"

  @property
  def samples_file(self) -> pathlib.Path:
    return self.root / "samples.jsonl"

  @property
  def metrics_json(self) -> pathlib.Path:
    return self.root / "metrics.json"


def flatten(config: ml_collections.ConfigDict | dict, prefix: str = "") -> dict:
  """{'a.b': value} for every leaf of a nested config."""
  items = config.items() if isinstance(config, dict) else config.to_dict().items()
  out = {}
  for key, value in items:
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      out.update(flatten(value if isinstance(value, dict) else value.to_dict(), f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


# Sections added to the configs after samples were drawn, with their switch field and its "off" value: while off, a
# section is left out of the config hashes (`provenance.config_hash`), so the samples drawn before it existed stay
# current.
OPTIONAL_SECTIONS = {"decoder_finetune": ("noise_std", 0.0)}


def without_optional_sections(data: dict) -> dict:
  """A config's JSON dict without the `OPTIONAL_SECTIONS` that are off."""
  return {k: v for k, v in data.items()
          if not (k in OPTIONAL_SECTIONS and isinstance(v, dict)
                  and v.get(OPTIONAL_SECTIONS[k][0]) == OPTIONAL_SECTIONS[k][1])}


# Fields added to the configs after workdirs were made, with the value that reproduces the behaviour from before
# they existed: a saved config without the field matches a current one holding this value.
ADDED_FIELD_DEFAULTS = {"diffusion.self_condition_mode": "per_example", "train.ema_power": 0.0,
                        "optim.decay_mask": "all", "optim.end_lr_fraction": 0.0, "data.group_by_length": 0,
                        "autoencoder.group_by_length": 0, "model.segment_embedding": False,
                        "model.class_input": "memory_token"}


def config_differences(saved: dict, current: dict) -> list[str]:
  """Fields (dotted names) whose values differ and that may not change within a workdir."""
  saved_flat, current_flat = flatten(saved), flatten(current)
  differing = []
  for key in sorted(set(saved_flat) | set(current_flat)):
    if any(key == m or (m.endswith(".") and key.startswith(m)) for m in MUTABLE_FIELDS):
      continue
    if key not in saved_flat and key in ADDED_FIELD_DEFAULTS and current_flat.get(key) == ADDED_FIELD_DEFAULTS[key]:
      continue
    if saved_flat.get(key, "<absent>") != current_flat.get(key, "<absent>"):
      differing.append(f"{key}: saved {saved_flat.get(key, '<absent>')!r}, now {current_flat.get(key, '<absent>')!r}")
  return differing


def save_or_check_config(config: ml_collections.ConfigDict, workdir: Workdir, *, write: bool = True) -> None:
  """Saves the config on a workdir's first run; on later runs, fails on any difference that matters.

  Raises:
    ValueError: naming every differing field, when the workdir was made with another config.
  """
  current = json.loads(config.to_json())
  if workdir.config_file.exists():
    saved = json.loads(workdir.config_file.read_text())
    differing = config_differences(saved, current)
    if differing:
      raise ValueError(
          f"the config differs from the one saved in {workdir.config_file} in fields that fix the model, data "
          "or latents:\n  " + "\n  ".join(differing) +
          "\nUse a new --workdir, or pass the saved values (e.g. --config.<field>=<saved value>).")
    return
  if write:
    workdir.root.mkdir(parents=True, exist_ok=True)
    tmp = workdir.config_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(current, indent=2, sort_keys=True))
    tmp.rename(workdir.config_file)


def config_digest(config: ml_collections.ConfigDict) -> str:
  """A short hash of a config's JSON (provenance of samples and metrics)."""
  return hashlib.sha256(json.dumps(json.loads(config.to_json()), sort_keys=True).encode()).hexdigest()[:16]
