"""Checks a run's config before any work starts, and reports every problem at once with its fix.

A typo such as `--config.sample.num_steps=2500` on a 1000-step model, or `--config.data.name=sst` on an
unconditional config, would otherwise fail deep inside a stage (or, worse, run and give wrong numbers).
`validate_config(config)` raises one `ConfigError` listing every problem found:

    config.sample.num_steps=2500: must be in [1, config.diffusion.num_timesteps=1000]. Fix: ...

Three kinds of check:
- ranges: learning rates > 0, probabilities in [0, 1], counts and batch sizes >= 1, ...;
- choices: names a piece of code looks up (noise schedule, objective, sampler, dtypes, ...), read from the
  modules that define them so the two cannot drift apart;
- links between fields: the denoiser covers the data's length, the decoder's positions cover the decode
  length, widths and step counts agree, class counts match the dataset.

Only what is present is validated: a section or field this module does not know (a future method's) is
ignored, and a missing field is not an error. The choices of the Gaussian latent diffusion method (schedule,
objective, loss, sampler) are checked only when `config.method` is absent or names that method; another
method adds its own checks with `register_check`. Whether `train.batch_size` divides over the devices is
checked where the devices are known (the trainer), not here.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, Sequence

import ml_collections

_MISSING = object()

# Values of `config.method` for which the Gaussian latent diffusion (LD4LG) choices are checked.
GAUSSIAN_METHODS = ("ld4lg", "gaussian", "ld4lg_seq2seq")
# Methods that read (source, target) pairs.
SEQ2SEQ_METHODS = ("diffuseq", "bart_seq2seq", "ld4lg_seq2seq")
# Compute dtypes of the denoiser (ldlg/networks/denoiser.py) and of the frozen BART (any jnp dtype name).
DENOISER_DTYPES = ("float32", "bfloat16")
AUTOENCODER_DTYPES = ("float32", "bfloat16", "float16")
# Learning-rate schedules of ldlg/engine/train_state.py:learning_rate_schedule.
LR_SCHEDULES = ("cosine", "constant")


class ConfigError(ValueError):
  """The config has problems; `problems` lists them, and the message has one line per problem."""

  def __init__(self, problems: Sequence["Problem"]):
    self.problems = list(problems)
    n = len(self.problems)
    super().__init__(f"{n} problem{'s' if n > 1 else ''} in the config:\n" +
                     "\n".join(f"  - {p}" for p in self.problems))


@dataclasses.dataclass(frozen=True)
class Problem:
  """One bad field: its dotted name under `config.`, its value, what is allowed, and how to fix it."""
  field: str
  value: Any
  allowed: str
  fix: str

  def __str__(self) -> str:
    return f"config.{self.field}={self.value!r}: must be {self.allowed}. Fix: {self.fix}"


class Checker:
  """Collects problems; helpers skip fields that are absent (validate what is present)."""

  def __init__(self, config: Any):
    self.config = config
    self.problems: list[Problem] = []

  def get(self, field: str) -> Any:
    """The value of a dotted field ("model.max_len"), or _MISSING when it or its section is absent."""
    node = self.config
    for part in field.split("."):
      try:
        node = node[part]
      except (KeyError, TypeError, AttributeError):
        return _MISSING
    return node

  def has(self, *fields: str) -> bool:
    return all(self.get(f) is not _MISSING for f in fields)

  def add(self, field: str, value: Any, allowed: str, fix: str | None = None) -> None:
    self.problems.append(Problem(field, value, allowed, fix or f"set --config.{field} to {allowed}"))

  def number(self, field: str, *, lo: float | None = None, hi: float | None = None,
             lo_open: bool = False, hi_open: bool = False, integer: bool = False,
             allowed: str | None = None, fix: str | None = None) -> None:
    """`field` is a number (an int if `integer`) in the interval from lo to hi (open ends as given)."""
    value = self.get(field)
    if value is _MISSING:
      return
    kind = "an integer" if integer else "a number"
    ok_type = (isinstance(value, numbers.Integral) if integer else isinstance(value, numbers.Real)) and \
        not isinstance(value, bool)
    parts = []
    if lo is not None:
      parts.append(f"> {lo}" if lo_open else f">= {lo}")
    if hi is not None:
      parts.append(f"< {hi}" if hi_open else f"<= {hi}")
    if allowed is not None:
      pass
    elif lo is not None and hi is not None:
      allowed = f"{kind} in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    else:
      allowed = f"{kind} {' and '.join(parts)}".rstrip()
    if not ok_type:
      self.add(field, value, allowed, fix)
      return
    if lo is not None and (value <= lo if lo_open else value < lo):
      self.add(field, value, allowed, fix)
    elif hi is not None and (value >= hi if hi_open else value > hi):
      self.add(field, value, allowed, fix)

  def probability(self, field: str) -> None:
    self.number(field, lo=0.0, hi=1.0)

  def count(self, field: str, lo: int = 1) -> None:
    self.number(field, lo=lo, integer=True)

  def choice(self, field: str, choices: Sequence[Any], fix: str | None = None) -> None:
    value = self.get(field)
    if value is not _MISSING and value not in choices:
      self.add(field, value, f"one of {tuple(choices)}", fix)

  def boolean(self, field: str) -> None:
    value = self.get(field)
    if value is not _MISSING and not isinstance(value, bool):
      self.add(field, value, "True or False")


CheckFn = Callable[[Checker], None]
CHECKS: list[CheckFn] = []


def register_check(fn: CheckFn) -> CheckFn:
  """Adds a check (a function of a `Checker`) run by every `validate_config`; usable as a decorator."""
  if fn not in CHECKS:
    CHECKS.append(fn)
  return fn


def check_config(config: ml_collections.ConfigDict | Any) -> list[Problem]:
  """Every problem found in `config` (empty when it is valid); see the module docstring."""
  checker = Checker(config)
  for check in CHECKS:
    check(checker)
  return checker.problems


def validate_config(config: ml_collections.ConfigDict | Any) -> None:
  """Raises `ConfigError` listing every problem of `config` (field, value, what is allowed, the fix)."""
  problems = check_config(config)
  if problems:
    raise ConfigError(problems)


def _is_gaussian(c: Checker) -> bool:
  method = c.get("method")
  return method is _MISSING or method in GAUSSIAN_METHODS


@register_check
def _data(c: Checker) -> None:
  from ldlg.data import datasets  # pylint: disable=g-import-not-at-top  (imports TFDS: only when used)
  from ldlg.data import latent_store  # pylint: disable=g-import-not-at-top
  c.count("data.max_length", lo=2)  # BOS and EOS
  c.choice("data.latent_dtype", latent_store.LATENT_DTYPES)
  c.count("data.shard_size")
  c.count("data.encode_batch_size")
  c.count("data.max_examples", lo=0)
  c.boolean("data.length_bucketed")
  c.count("data.group_by_length", lo=0)
  name = c.get("data.name")
  if name is _MISSING:
    return
  try:
    spec, _ = datasets.get_spec(str(name))
  except ValueError:
    c.add("data.name", name, f"one of {tuple(sorted(datasets.DATASETS))} (optionally 'name/config')")
    return
  known = set(spec.splits) | set(spec.optional_splits)
  for field in ("data.train_split", "data.eval_split"):
    split = c.get(field)
    if split is _MISSING:
      continue
    base = str(split).split("[")[0]  # "train[:1000]" slices the train split
    base = datasets.SPLIT_ALIASES.get(base, base)
    if base not in known:
      c.add(field, split, f"a split of {spec.name}: one of {tuple(sorted(known))}",
            f"set --config.{field} to one of them" +
            (f" (optional splits need their file: {dict(spec.optional_splits)})" if spec.optional_splits
             else ""))
  num_classes = c.get("model.num_classes")
  if num_classes is not _MISSING and isinstance(num_classes, numbers.Integral) \
      and num_classes not in (0, spec.num_classes):
    if spec.num_classes:
      c.add("model.num_classes", num_classes,
            f"{spec.num_classes} (the classes of {spec.name}) or 0 (unconditional)",
            f"set --config.model.num_classes={spec.num_classes} (or 0), or check --config.data.name")
    else:
      c.add("model.num_classes", num_classes, f"0: {spec.name} has no class labels",
            "set --config.model.num_classes=0, or check --config.data.name")


@register_check
def _autoencoder(c: Checker) -> None:
  c.boolean("autoencoder.pretrain")
  c.choice("autoencoder.dtype", AUTOENCODER_DTYPES)
  c.count("autoencoder.num_beams")
  c.number("autoencoder.repetition_penalty", lo=0.0, lo_open=True)
  c.count("autoencoder.no_repeat_ngram_size", lo=0)
  c.count("autoencoder.max_decode_length")
  c.count("autoencoder.min_decode_length", lo=0)
  if c.has("autoencoder.min_decode_length", "autoencoder.max_decode_length"):
    lo, hi = c.get("autoencoder.min_decode_length"), c.get("autoencoder.max_decode_length")
    if isinstance(lo, numbers.Real) and isinstance(hi, numbers.Real) and lo > hi:
      c.add("autoencoder.min_decode_length", lo, f"<= config.autoencoder.max_decode_length={hi}")
  if c.has("autoencoder.max_length", "data.max_length") and \
      c.get("autoencoder.max_length") != c.get("data.max_length"):
    c.add("autoencoder.max_length", c.get("autoencoder.max_length"),
          f"equal to config.data.max_length={c.get('data.max_length')} (the encoder truncates text at the "
          f"length the latents are stored at)",
          "link them: config.autoencoder.max_length = config.data.get_ref('max_length')")
  pretrain = c.get("autoencoder.pretrain")
  if pretrain is False:
    name = c.get("autoencoder.name")
    if name is not _MISSING and not name:
      c.add("autoencoder.name", name, "a Hugging Face hub name or a local BART folder when pretrain=False",
            "set --config.autoencoder.name=facebook/bart-base, or --config.autoencoder.pretrain=True")
  if pretrain is not True:
    return
  # Fields used only when we pretrain our own BART (ldlg/codecs/bart/pretrain.py).
  for field in ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "attention_heads", "ffn_dim",
                "max_position_embeddings", "batch_size", "num_steps", "pad_multiple", "log_every",
                "checkpoint_every", "keep_checkpoints", "eval_num_beams", "eval_batch_size"):
    c.count(f"autoencoder.{field}")
  for field in ("tokenizer_min_frequency", "warmup_steps", "eval_num_sentences", "group_by_length"):
    c.count(f"autoencoder.{field}", lo=0)
  for field in ("dropout", "attention_dropout", "clean_fraction", "mask_ratio", "random_ratio",
                "token_mask_ratio"):
    c.probability(f"autoencoder.{field}")
  c.number("autoencoder.poisson_lambda", lo=0.0, lo_open=True)
  c.number("autoencoder.learning_rate", lo=0.0, lo_open=True)
  c.number("autoencoder.weight_decay", lo=0.0)
  c.number("autoencoder.grad_clip_norm", lo=0.0)
  d_model, heads = c.get("autoencoder.d_model"), c.get("autoencoder.attention_heads")
  if isinstance(d_model, int) and isinstance(heads, int) and heads > 0 and d_model % heads:
    c.add("autoencoder.d_model", d_model, f"a multiple of config.autoencoder.attention_heads={heads}")
  positions = c.get("autoencoder.max_position_embeddings")
  if isinstance(positions, int):
    for field, why in (("autoencoder.max_decode_length", "the decoder cannot generate past its positions"),
                       ("autoencoder.max_length", "the encoder cannot read past its positions")):
      value = c.get(field)
      if isinstance(value, int) and value > positions:
        c.add(field, value, f"<= config.autoencoder.max_position_embeddings={positions} ({why})",
              f"raise --config.autoencoder.max_position_embeddings to at least {value}, or lower "
              f"--config.data.max_length")
  latent_dim = c.get("model.latent_dim")
  if c.get("codec") == "bart_compressed":
    return  # The latents are the compression network's (checked by _codec).
  if d_model is not _MISSING and latent_dim is not _MISSING and latent_dim != d_model:
    c.add("model.latent_dim", latent_dim,
          f"equal to config.autoencoder.d_model={d_model} (the latents are the encoder's hidden states)",
          "link them: config.model.latent_dim = config.autoencoder.get_ref('d_model')")


@register_check
def _model(c: Checker) -> None:
  for field in ("latent_dim", "dim", "num_layers", "num_heads", "ff_mult", "max_len", "rel_pos_buckets",
                "rel_pos_max_distance", "num_timesteps"):
    c.count(f"model.{field}")
  c.count("model.num_classes", lo=0)
  c.probability("model.dropout")
  c.choice("model.dtype", DENOISER_DTYPES)
  dim, heads = c.get("model.dim"), c.get("model.num_heads")
  if isinstance(dim, int) and isinstance(heads, int) and heads > 0 and dim % heads:
    c.add("model.dim", dim, f"a multiple of config.model.num_heads={heads}")
  max_len, length = c.get("model.max_len"), c.get("data.max_length")
  compressed = c.get("codec") == "bart_compressed"  # Then max_len is the compressed latent's N (_codec checks it).
  if isinstance(max_len, int) and isinstance(length, int) and max_len < length and not compressed:
    c.add("model.max_len", max_len, f">= config.data.max_length={length} (the longest latent sequence)",
          f"set --config.model.max_len={length}, or link it: "
          f"config.model.max_len = config.data.get_ref('max_length')")
  steps, T = c.get("model.num_timesteps"), c.get("diffusion.num_timesteps")
  if steps is not _MISSING and T is not _MISSING and steps != T:
    c.add("model.num_timesteps", steps, f"equal to config.diffusion.num_timesteps={T}",
          "link them: config.model.num_timesteps = config.diffusion.get_ref('num_timesteps')")


@register_check
def _diffusion(c: Checker) -> None:
  c.count("diffusion.num_timesteps")
  c.probability("diffusion.self_condition_prob")
  c.probability("diffusion.label_dropout")
  c.number("diffusion.beta_start", lo=0.0, hi=1.0, lo_open=True, hi_open=True)
  c.number("diffusion.beta_end", lo=0.0, hi=1.0, lo_open=True, hi_open=True)
  if not _is_gaussian(c):
    return
  from ldlg.methods.gaussian import losses, parameterization, schedules  # pylint: disable=g-import-not-at-top
  c.choice("diffusion.schedule", schedules.SCHEDULES)
  c.choice("diffusion.objective", parameterization.OBJECTIVES)
  c.choice("diffusion.loss_type", losses.LOSS_TYPES)
  start, end = c.get("diffusion.beta_start"), c.get("diffusion.beta_end")
  if c.get("diffusion.schedule") == "linear" and isinstance(start, numbers.Real) and \
      isinstance(end, numbers.Real) and start > end:
    c.add("diffusion.beta_start", start, f"<= config.diffusion.beta_end={end} (a linear schedule rises)")


@register_check
def _optim_and_train(c: Checker) -> None:
  c.number("optim.lr", lo=0.0, lo_open=True)
  c.count("optim.warmup_steps", lo=0)
  c.choice("optim.schedule", LR_SCHEDULES)
  c.number("optim.weight_decay", lo=0.0)
  c.number("optim.b1", lo=0.0, hi=1.0, hi_open=True)
  c.number("optim.b2", lo=0.0, hi=1.0, hi_open=True)
  c.number("optim.eps", lo=0.0, lo_open=True)
  c.number("optim.grad_clip", lo=0.0, fix="set --config.optim.grad_clip to a norm > 0, or 0 for no clipping")
  for field in ("num_steps", "batch_size", "log_every", "ckpt_every", "keep_checkpoints"):
    c.count(f"train.{field}")
  c.count("train.sample_every", lo=0)
  c.count("train.num_log_samples", lo=0)
  c.probability("train.ema_decay")
  c.boolean("train.ema_warmup")


@register_check
def _sample(c: Checker) -> None:
  c.count("sample.num_samples")
  c.count("sample.batch_size")
  c.count("sample.max_redraws", lo=0)
  c.count("sample.length_bucket", lo=0)
  c.number("sample.checkpoint_step", lo=-1, integer=True, fix="set --config.sample.checkpoint_step to a "
           "saved step, or -1 for the latest")
  c.number("sample.eta", lo=0.0)
  c.number("sample.guidance_scale", lo=0.0)
  T = c.get("diffusion.num_timesteps")
  if isinstance(T, int) and T >= 1:
    c.number("sample.num_steps", lo=1, hi=T, integer=True,
             allowed=f"an integer in [1, config.diffusion.num_timesteps={T}]",
             fix=f"set --config.sample.num_steps to at most {T} (e.g. 250 of 1000 with the ddim sampler)")
  else:
    c.count("sample.num_steps")
  if _is_gaussian(c):
    from ldlg.methods.gaussian import samplers  # pylint: disable=g-import-not-at-top
    c.choice("sample.sampler", samplers.ALL_SAMPLERS)
    from ldlg.methods.gaussian import losses as gaussian_losses  # pylint: disable=g-import-not-at-top
    c.choice("diffusion.self_condition_mode", gaussian_losses.SELF_CONDITION_MODES)
    if c.get("sample.sampler") == "ddpm" and c.has("sample.num_steps") and c.get("sample.num_steps") != T:
      c.add("sample.num_steps", c.get("sample.num_steps"),
            f"config.diffusion.num_timesteps={T} for the ddpm sampler (it visits every step)",
            "use --config.sample.sampler=ddim to skip steps, or set num_steps to T")
  class_id, num_classes = c.get("sample.class_id"), c.get("model.num_classes")
  if class_id is _MISSING or not isinstance(num_classes, numbers.Integral):
    return
  if num_classes == 0 and class_id != -1:
    c.add("sample.class_id", class_id, "-1 on an unconditional model (config.model.num_classes=0)",
          "set --config.sample.class_id=-1, or train a class-conditional model (config.model.num_classes)")
  elif not (isinstance(class_id, numbers.Integral) and -1 <= class_id <= num_classes):
    c.add("sample.class_id", class_id,
          f"an integer in [-1, {num_classes}] (-1: balanced over classes; 0..{num_classes - 1}: that class; "
          f"{num_classes}: the null class, unconditional)")


@register_check
def _eval(c: Checker) -> None:
  featurizer = c.get("eval.featurizer")
  if featurizer is not _MISSING and not (isinstance(featurizer, str) and featurizer):
    c.add("eval.featurizer", featurizer,
          "'auto', 'minilm', or a GPT-2 hub name or local folder (ldlg/evaluation/featurizers.py)")
  ppl = c.get("eval.ppl_model")
  if ppl is not _MISSING and not isinstance(ppl, str):
    c.add("eval.ppl_model", ppl, "a causal LM hub name or local folder, or '' to skip perplexity")
  c.count("eval.num_draws")
  c.count("eval.max_reference")
  c.count("eval.likelihood_examples", lo=0)
  c.count("eval.likelihood_probes")
  c.count("eval.vlb_terms")
  for field in ("eval.likelihood_rtol", "eval.likelihood_atol"):
    c.number(field, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
  draws, n = c.get("eval.num_draws"), c.get("sample.num_samples")
  if isinstance(draws, int) and isinstance(n, int) and n < draws:
    c.add("eval.num_draws", draws, f"<= config.sample.num_samples={n} (each draw needs samples)")


@register_check
def _seq2seq(c: Checker) -> None:
  """The seq2seq methods (DiffuSeq, the BART baseline) need a dataset with sources, and room for the target."""
  method = c.get("method")
  if method not in SEQ2SEQ_METHODS:
    return
  from ldlg.data import datasets  # pylint: disable=g-import-not-at-top
  c.count("data.max_source_length", lo=3)
  c.count("sample.num_candidates")
  c.count("sample.num_sources", lo=0)
  from ldlg.methods.gaussian.seq2seq_stages import LENGTH_SOURCES  # pylint: disable=g-import-not-at-top
  c.choice("sample.length_from", LENGTH_SOURCES)
  c.count("sample.length_min_count")
  name = c.get("data.name")
  if isinstance(name, str):
    try:
      spec, _ = datasets.get_spec(name)
    except ValueError:
      return  # _data names the problem.
    if not spec.has_source:
      c.add("data.name", name, f"a sequence-to-sequence dataset with a source field (e2e, qqp) for {method}",
            "use --config=configs/e2e.py:diffuseq_cpu (or :ar_seq2seq_cpu), or another method for this dataset")
  source, positions = c.get("data.max_source_length"), c.get("autoencoder.max_position_embeddings")
  if method == "bart_seq2seq" and isinstance(source, int) and isinstance(positions, int) and source > positions:
    c.add("data.max_source_length", source, f"<= config.autoencoder.max_position_embeddings={positions} (the "
          "encoder cannot read past its positions)")


@register_check
def _codec(c: Checker) -> None:
  """`config.codec`: the compressed codec is for LD4LG (its precompute and sampler), with a `compression` section
  whose latent [num_latents, latent_width] is the denoiser's [max_len, latent_dim]."""
  from ldlg.codecs import LATENT_CODECS  # pylint: disable=g-import-not-at-top
  c.choice("codec", LATENT_CODECS)
  if c.get("codec") != "bart_compressed":
    return
  method = c.get("method")
  if method is not _MISSING and method not in ("ld4lg", "gaussian"):
    c.add("codec", "bart_compressed", f"'bart_latents' for method {method!r} (compressed latents are for LD4LG)",
          "drop --config.codec or use an LD4LG config (e.g. configs/sst.py:cpu_compressed)")
  if not c.has("compression"):
    c.add("compression", None, "a compression section (ldlg.codecs.compression.train.default_compression_config)",
          "use a *_compressed variant, which adds it")
    return
  for field in ("compression.num_latents", "compression.latent_width", "compression.num_steps",
                "compression.batch_size"):
    c.count(field)
  c.number("compression.train_noise_std", lo=0.0)
  for model_field, compression_field in (("model.latent_dim", "compression.latent_width"),
                                         ("model.max_len", "compression.num_latents")):
    want = c.get(compression_field)
    if c.get(model_field) != want:
      c.add(model_field, c.get(model_field), f"{want} (= {compression_field}: the denoiser reads the compressed "
            "latents)", f"set --config.{model_field}={want}")


@register_check
def _decoder_finetune(c: Checker) -> None:
  """`config.decoder_finetune` (the BART decoder fine-tuned on noised latents): a σ ≥ 0 and, when on, a training
  run to do, on the plain BART latents (the compression network trains its own decoding side with noise)."""
  if not c.has("decoder_finetune"):
    return
  c.number("decoder_finetune.noise_std", lo=0.0)
  noise = c.get("decoder_finetune.noise_std")
  if not isinstance(noise, (int, float)) or noise <= 0:
    return
  for field in ("decoder_finetune.num_steps", "decoder_finetune.batch_size"):
    c.count(field)
  c.number("decoder_finetune.lr", lo=0.0, lo_open=True)
  if c.get("codec") == "bart_compressed":
    c.add("decoder_finetune.noise_std", noise, "0 with codec='bart_compressed' (the compression network is trained "
          "with noise on its latents: compression.train_noise_std)", "set --config.decoder_finetune.noise_std=0")


@register_check
def _diffuseq(c: Checker) -> None:
  """DiffuSeq's fields (`configs/default.make_diffuseq_cpu`), checked only when config.method is "diffuseq"."""
  if c.get("method") != "diffuseq":
    return
  from ldlg.methods.gaussian import schedules  # pylint: disable=g-import-not-at-top
  from ldlg.methods.seq2seq import rounding  # pylint: disable=g-import-not-at-top
  c.count("model.embed_dim")
  c.count("model.vocab_size", lo=0)
  c.choice("sample.rounding", rounding.ROUNDINGS)
  c.boolean("sample.clamp")
  c.choice("diffusion.schedule", schedules.SCHEDULES)
  c.boolean("diffusion.importance_sampling")
  c.boolean("diffusion.learn_padding")
  c.probability("diffusion.importance_uniform_prob")
  c.count("diffusion.importance_history")
  source, length = c.get("data.max_source_length"), c.get("model.max_len")
  if isinstance(source, int) and isinstance(length, int) and source >= length:
    c.add("data.max_source_length", source, f"< config.model.max_len={length} (the target needs positions too)",
          f"lower --config.data.max_source_length, or raise --config.data.max_length above {source}")
