"""`MaskedDiffusion`: masked discrete diffusion over token ids (MDLM) as a `ldlg.methods.base.Method`.

The data are token ids from the project's BPE tokenizer, framed `<s> text </s>` and right-padded with <pad> as for
the AR baseline; the tokenizer's `<mask>` token is the absorbing state. Built from plain arguments; `from_config`
reads two config sections:

  config.method  (the method's own fields; a missing one takes the default in brackets)
    name            "masked" (the registry key)
    schedule        "loglinear" | "cosine" | "poly"       masking schedule α_t ("loglinear", MDLM's)
    eps             α_1 (1e-3)
    exponent        k of the "poly" schedule (1.0)
    num_timesteps   0 = continuous-time NELBO, T > 0 = the T-step NELBO (0)
    t_min           continuous time drawn from [t_min, 1] (1e-3)
    pad_in_loss     pad positions are modelled tokens (True; see losses.py)
    label_dropout   probability of the null class in training, class-conditional only (0.1)
    count_bos       count <s> in the per-token denominator (False: the AR baseline's targets, text + </s>)
  config.model   (the `TokenTransformer` fields; vocab_size comes from the tokenizer)
    dim, num_layers, num_heads, ff_mult, max_len, num_classes, time_conditioning, rel_pos_buckets,
    rel_pos_max_distance, dropout, dtype

and `tokenizer_info`: {"vocab_size", "mask_id", "pad_id", "bos_id" (optional)}; `tokenizer_info(tokenizer)`
builds it from a Hugging Face tokenizer.
"""
from typing import Any, Iterable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ldlg.methods.base import METHODS, Method
from ldlg.methods.masked import losses, samplers
from ldlg.methods.masked.logits_fn import logits_fn_from_module
from ldlg.methods.masked.schedule import MaskSchedule
from ldlg.networks.token_transformer import TokenTransformer

_METHOD_FIELDS = ("schedule", "eps", "exponent", "num_timesteps", "t_min", "pad_in_loss", "label_dropout",
                  "count_bos")
_MODEL_FIELDS = ("dim", "num_layers", "num_heads", "ff_mult", "num_classes", "time_conditioning",
                 "rel_pos_buckets", "rel_pos_max_distance", "dropout", "dtype")


def tokenizer_info(tokenizer: Any) -> dict[str, int]:
  """{"vocab_size", "mask_id", "pad_id", "bos_id"} of a Hugging Face tokenizer (the project's BART BPE)."""
  info = {"vocab_size": len(tokenizer)}
  for name in ("mask", "pad", "bos"):
    value = getattr(tokenizer, f"{name}_token_id", None)
    if value is None:
      raise ValueError(f"the tokenizer has no {name} token; masked diffusion needs <mask> (the absorbing state), "
                       "<pad> and <s> (the project's BART tokenizer has all three)")
    info[f"{name}_id"] = int(value)
  return info


@METHODS.register("masked")
class MaskedDiffusion(Method):
  """MDLM: SUBS-parameterized bidirectional transformer trained on the Rao-Blackwellized NELBO.

  Args:
    vocab_size: V (the mask token included).
    mask_id: the absorbing token's id.
    pad_id: the padding token's id.
    max_len: longest sequence the network accepts (its absolute positions).
    bos_id: a token left out of the per-token count (None: count every real token).
    network: other `TokenTransformer` fields (dim, num_layers, num_heads, ff_mult, num_classes,
      time_conditioning, rel_pos_buckets, rel_pos_max_distance, dropout, dtype).
    schedule, eps, exponent: the masking schedule (`MaskSchedule`).
    num_timesteps: 0 = continuous-time NELBO; T > 0 = T-step NELBO.
    t_min: lower end of the continuous training times.
    pad_in_loss: pads are modelled tokens (see `ldlg.methods.masked.losses`).
    label_dropout: null-class probability in training (class-conditional models).
  """

  name = "masked"
  batch_fields = ("input_ids", "mask")

  def __init__(self, *, vocab_size: int, mask_id: int, pad_id: int, max_len: int, bos_id: Optional[int] = None,
               network: Optional[Mapping[str, Any]] = None, schedule: str = "loglinear", eps: float = 1e-3,
               exponent: float = 1.0, num_timesteps: int = 0, t_min: float = 1e-3, pad_in_loss: bool = True,
               label_dropout: float = 0.1):
    for name, value in (("mask_id", mask_id), ("pad_id", pad_id)):
      if not 0 <= value < vocab_size:
        raise ValueError(f"{name}={value} is outside the vocabulary [0, {vocab_size})")
    if mask_id == pad_id:
      raise ValueError("mask_id and pad_id must differ: pads are data, the mask is the absorbing state")
    network = dict(network or {})
    unknown = sorted(set(network) - set(_MODEL_FIELDS))
    if unknown:
      raise ValueError(f"unknown network fields {unknown}; TokenTransformer takes {_MODEL_FIELDS}")
    self.model = TokenTransformer(vocab_size=vocab_size, max_len=max_len, **network)
    self.vocab_size, self.mask_id, self.pad_id, self.bos_id = vocab_size, mask_id, pad_id, bos_id
    self.max_len = max_len
    self.num_classes = self.model.num_classes
    self.schedule = MaskSchedule(schedule, eps, exponent)
    self.logits_fn = logits_fn_from_module(self.model)
    if self.num_classes > 0:
      self.batch_fields = ("input_ids", "mask", "label")
    common = dict(mask_id=mask_id, num_timesteps=num_timesteps, t_min=t_min, pad_in_loss=pad_in_loss,
                  bos_id=bos_id, num_classes=self.num_classes)
    self._terms_kwargs = common
    self._train_loss = losses.make_loss_fn(self.logits_fn, self.schedule, label_dropout=label_dropout,
                                           train=True, **common)
    # Evaluation: no dropout and no label dropout (a class-conditional model is scored given the true class).
    self._eval_loss = losses.make_loss_fn(self.logits_fn, self.schedule, label_dropout=0.0, train=False,
                                          **common)
    self._eval_sums = jax.jit(self._eval_sums_impl)

  @classmethod
  def from_config(cls, config: Any, tokenizer_info: Mapping[str, int]) -> "MaskedDiffusion":
    """Built from `config.method` and `config.model` (see the module docstring) and the tokenizer's ids."""
    method, model = config.method, config.model
    get = lambda section, field, default: section[field] if field in section else default
    name = get(method, "name", "masked")
    if name != cls.name:
      raise ValueError(f"config.method.name is {name!r}, not {cls.name!r}")
    known = set(_METHOD_FIELDS) | {"name"}
    unknown = sorted(set(method.keys()) - known)
    if unknown:
      raise ValueError(f"unknown config.method fields {unknown}; the masked method reads {sorted(known)}")
    network = {k: model[k] for k in _MODEL_FIELDS if k in model}
    unknown = sorted(set(model.keys()) - set(_MODEL_FIELDS) - {"max_len"})
    if unknown:
      raise ValueError(f"unknown config.model fields {unknown}; the masked method's network reads "
                       f"{sorted(_MODEL_FIELDS + ('max_len',))}")
    return cls(vocab_size=int(tokenizer_info["vocab_size"]), mask_id=int(tokenizer_info["mask_id"]),
               pad_id=int(tokenizer_info["pad_id"]),
               bos_id=(None if get(method, "count_bos", False) or tokenizer_info.get("bos_id") is None
                       else int(tokenizer_info["bos_id"])),
               max_len=int(get(model, "max_len", 128)), network=network,
               schedule=get(method, "schedule", "loglinear"), eps=float(get(method, "eps", 1e-3)),
               exponent=float(get(method, "exponent", 1.0)), num_timesteps=int(get(method, "num_timesteps", 0)),
               t_min=float(get(method, "t_min", 1e-3)), pad_in_loss=bool(get(method, "pad_in_loss", True)),
               label_dropout=float(get(method, "label_dropout", 0.1)))

  def init_params(self, rng: jax.Array) -> Any:
    """Parameters of the network, initialised on a [1, max_len] input."""
    tokens = jnp.full((1, self.max_len), self.mask_id, jnp.int32)
    t = jnp.ones((1,), jnp.float32)
    class_id = jnp.zeros((1,), jnp.int32) if self.num_classes else None
    return jax.jit(lambda r: self.model.init(r, tokens, None, t, class_id)["params"])(rng)

  def loss_fn(self, params, rng, batch):
    """Per-token NELBO with dropout and label dropout (see `losses.make_loss_fn` for the metrics)."""
    return self._train_loss(params, rng, batch)

  def eval_loss_fn(self, params, rng, batch):
    """Per-token NELBO without dropout or label dropout."""
    return self._eval_loss(params, rng, batch)

  def make_sampler(self, *, num_steps: int = 1000, length: Optional[int] = None, cache: Optional[bool] = None,
                   top_p: float = 1.0, guidance_scale: float = 1.0, overlap: Optional[int] = None,
                   return_trajectory: bool = False, logits_fn=None) -> samplers.SampleFn:
    """A compiled sampler of `length` tokens (default max_len).

    `logits_fn` replaces the network's (same signature as `self.logits_fn`), e.g. wrapped in a trace counter.

    Up to max_len: ancestral (`samplers.make_sampler`); longer: semi-autoregressive in windows of max_len with
    `overlap` (default max_len // 2) clean tokens carried over (`samplers.make_semi_ar_sampler`). `cache`
    defaults to on for a model without time input. See those functions for the returned `sample(...)`.
    """
    length = self.max_len if length is None else int(length)
    logits_fn = logits_fn or self.logits_fn
    time_cond = self.model.time_conditioning
    cache = (not time_cond) if cache is None else bool(cache)
    common = dict(mask_id=self.mask_id, num_steps=num_steps, cache=cache, top_p=top_p,
                  guidance_scale=guidance_scale, num_classes=self.num_classes, time_conditioning=time_cond)
    if length <= self.max_len:
      return samplers.make_sampler(logits_fn, self.schedule, length=length, pad_id=self.pad_id,
                                   return_trajectory=return_trajectory, **common)
    if return_trajectory:
      raise ValueError("the semi-autoregressive sampler (length > max_len) does not record trajectories")
    return samplers.make_semi_ar_sampler(
        logits_fn, self.schedule, window=self.max_len, total_length=length,
        overlap=self.max_len // 2 if overlap is None else int(overlap), **common)

  def _eval_sums_impl(self, params, rng, batch):
    terms = losses.nelbo_terms(self.logits_fn, self.schedule, params, rng, batch, label_dropout=0.0,
                               train=False, **self._terms_kwargs)
    return jnp.sum(terms["nelbo"]), jnp.sum(terms["num_tokens"]), jnp.sum(terms["nelbo_padding"])

  def evaluate_nelbo(self, params: Any, batches: Iterable[Mapping[str, Any]], rng: jax.Array, *,
                     num_repeats: int = 1) -> dict[str, float]:
    """NELBO per token and the perplexity bound exp(NELBO / tokens) over held-out batches.

    Each batch ({"input_ids" [b, L], "mask" [b, L] bool, "label" [b] for a class-conditional model}) is scored
    `num_repeats` times with independent (t, z_t) draws, which averages the Monte Carlo noise away; every draw is
    an unbiased estimate of the (t_min-truncated) NELBO. Tokens are counted as in the loss (real tokens, <s> not
    counted unless the method counts it), so the bound compares with the AR baseline's perplexity on the same
    texts.

    Returns:
      {"nelbo_per_token" (nats), "perplexity_bound", "num_tokens", "num_sequences", "padding_share" (the share
       of the NELBO paid at padding positions: where the text ends, and the pads after it, with pad_in_loss)}.
    """
    if num_repeats < 1:
      raise ValueError(f"num_repeats must be >= 1, got {num_repeats}")
    total, tokens, sequences, padding = 0.0, 0.0, 0, 0.0
    for i, batch in enumerate(batches):
      batch = {k: jnp.asarray(v) for k, v in batch.items() if k != "example_index"}
      batch["example_index"] = jnp.arange(batch["input_ids"].shape[0])
      for r in range(num_repeats):
        s, n, pad = self._eval_sums(params, jax.random.fold_in(jax.random.fold_in(rng, i), r), batch)
        total += float(s)
        padding += float(pad)
        if r == 0:
          tokens += float(n)
      sequences += int(batch["input_ids"].shape[0])
    if tokens == 0:
      raise ValueError("no tokens to score: the held-out batches are empty")
    per_token = total / num_repeats / tokens
    return {"nelbo_per_token": per_token, "perplexity_bound": float(np.exp(per_token)), "num_tokens": tokens,
            "num_sequences": sequences, "padding_share": padding / total if total > 0 else 0.0}

  def evaluation_hooks(self):
    return {"nelbo": self.evaluate_nelbo}

  @staticmethod
  def stages():
    from ldlg.methods.masked import stages
    return stages.stages()

  @staticmethod
  def likelihood_metrics(config, workdir, data_dir) -> dict:
    from ldlg.methods.masked import stages
    return stages.likelihood_metrics(config, workdir, data_dir)

  @classmethod
  def token_nll(cls, config, workdir, data_dir, step: int = -1) -> dict:
    from ldlg.methods.masked import stages
    result = stages.nelbo_on_eval_split(config, workdir, data_dir, step)
    return {"nll_per_token": result["nelbo_per_token"], "perplexity": result["perplexity_bound"], "exact": False,
            **result}
