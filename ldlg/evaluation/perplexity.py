"""Perplexity of texts under a pluggable causal language model (the paper's fluency judge).

As the reference computes it (HF `evaluate`'s perplexity metric with gpt2-large): each text is tokenized
without special tokens, the model's BOS token is prepended, and the text's perplexity is
exp(mean over its tokens of -log p(token | BOS, previous tokens)); the reported number is the mean over
texts of the per-text perplexities (not the exponentiated mean NLL of the corpus).

Any model can be the judge through `CausalLM`: a logits function of (params, ids, mask), its params and an
encode function. `causal_lm_from_hf` adapts a Hugging Face Flax causal LM (`FlaxGPT2LMHeadModel`, ...) and
its tokenizer; `load_causal_lm` loads one by hub name or folder. The project's own AR baseline plugs in the
same way. Scoring runs one jitted function per length bucket (see `batching.py`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ldlg.evaluation import batching
from ldlg.evaluation import hf_loading

LogitsFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class CausalLM:
  """A causal LM as the perplexity code needs it.

  Attributes:
    name: recorded with the result ("gpt2-large", "ar_baseline@step_10000").
    logits_fn: (params, input_ids [B, L] int32, attention_mask [B, L] int32) -> logits [B, L, V]; position
      i's logits predict token i + 1. Inputs are right-padded; outputs at padded positions are ignored.
    params: the model's parameters, passed to `logits_fn` (an argument, so new params do not recompile).
    encode: text -> token ids, without BOS/EOS.
    bos_id: prepended to every text so its first token is scored too.
    pad_id: written at padded positions (any valid id).
    max_positions: the longest input the model takes (learned positions); longer texts are cut to it.
  """
  name: str
  logits_fn: LogitsFn
  params: Any
  encode: Callable[[str], list[int]]
  bos_id: int
  pad_id: int = 0
  max_positions: int | None = None

  @functools.cached_property
  def nll_fn(self) -> Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    """The jitted scorer, built once per `CausalLM` so repeated evaluations reuse its compilations."""
    return _make_nll_fn(self.logits_fn)


def causal_lm_from_hf(model: Any, tokenizer: Any, name: str | None = None, params: Any = None) -> CausalLM:
  """Wraps a Hugging Face Flax causal LM (`model(input_ids, attention_mask, params=...).logits`) and tokenizer.

  `params` defaults to `model.params` (pass them for a model loaded with `_do_init=False`)."""
  bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
  if bos is None:
    raise ValueError("the tokenizer has neither a BOS nor an EOS token to start texts with; set bos_token")

  def logits_fn(params: Any, ids: jax.Array, mask: jax.Array) -> jax.Array:
    return model(input_ids=ids, attention_mask=mask, params=params).logits

  return CausalLM(name=name or getattr(model.config, "name_or_path", "") or type(model).__name__,
                  logits_fn=logits_fn, params=model.params if params is None else params,
                  encode=lambda text: tokenizer.encode(text, add_special_tokens=False),
                  bos_id=int(bos), pad_id=int(tokenizer.pad_token_id or bos),
                  max_positions=getattr(model.config, "n_positions", None)
                  or getattr(model.config, "max_position_embeddings", None))


def load_causal_lm(name_or_path: str = "gpt2-large", dtype: Any = jnp.float32) -> CausalLM:
  """Loads a Flax causal LM and tokenizer by hub name or local folder.

  Raises:
    RuntimeError: the weights cannot be had (offline with no local copy); the message says what to pass.
  """
  import pathlib  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(name_or_path)
  try:
    tokenizer = transformers.AutoTokenizer.from_pretrained(name_or_path)
    model, params = hf_loading.load_flax_model(transformers.FlaxAutoModelForCausalLM, name_or_path, dtype=dtype)
  except (OSError, ValueError) as err:
    raise RuntimeError(
        f"could not load the perplexity model {name_or_path!r}: {err}. Without network access pass a local "
        "folder holding a Flax causal LM and its tokenizer (e.g. the project's AR baseline)") from err
  return causal_lm_from_hf(model, tokenizer, name=path.name if path.is_dir() else name_or_path, params=params)


def _make_nll_fn(logits_fn: LogitsFn) -> Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
  """Per-row summed NLL (nats) of tokens 1.. given the previous ones, and the number of scored tokens."""

  def nll(params: Any, ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits = logits_fn(params, ids, mask).astype(jnp.float32)  # [B, L, V]
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    target = ids[:, 1:]
    token_nll = -jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]  # [B, L-1]
    target_mask = mask[:, 1:].astype(jnp.float32)
    return (token_nll * target_mask).sum(1), target_mask.sum(1)

  return jax.jit(nll)


def token_nlls(texts: Sequence[str], lm: CausalLM, *, batch_size: int = 16,
               max_length: int | None = 256) -> tuple[np.ndarray, np.ndarray]:
  """Summed NLL (nats) and scored-token count per text.

  Args:
    texts: texts to score; each must have at least one token.
    lm: the judge.
    batch_size: rows per jitted call.
    max_length: tokens kept per text including BOS (longer texts are cut, as `evaluate` does with
      max_length); None keeps everything (one more bucket per power of two).

  Returns:
    (nll_sum [N] float64, num_tokens [N] int64).
  """
  if isinstance(texts, str):
    raise ValueError("pass a list of texts, not a single string")
  ids = [[lm.bos_id] + list(lm.encode(t)) for t in texts]
  empty = [i for i, x in enumerate(ids) if len(x) < 2]
  if empty:
    raise ValueError(f"texts {empty[:10]} have no tokens, so their perplexity is undefined; drop empty "
                     "texts first (evaluate_texts skips and counts them)")
  if lm.max_positions is not None:  # A model with learned positions cannot read past them.
    max_length = lm.max_positions if max_length is None else min(max_length, lm.max_positions)
  if max_length is not None:
    ids = [x[:max_length] for x in ids]
  longest = max(len(x) for x in ids) if ids else 1
  buckets = batching.bucket_lengths(max_length if max_length is not None else
                                    int(2 ** np.ceil(np.log2(max(longest, 16)))))
  fn = lm.nll_fn
  nll_sum = np.zeros(len(ids), np.float64)
  count = np.zeros(len(ids), np.int64)
  for batch in batching.iterate_batches(ids, batch_size=batch_size, buckets=buckets, pad_id=lm.pad_id):
    s, c = jax.device_get(fn(lm.params, batch.input_ids, batch.attention_mask))
    n = len(batch.indices)
    nll_sum[batch.indices] = s[:n]
    count[batch.indices] = np.rint(c[:n]).astype(np.int64)
  return nll_sum, count


def perplexities(texts: Sequence[str], lm: CausalLM, **kwargs: Any) -> np.ndarray:
  """Per-text perplexity exp(mean token NLL): float64 [N]. kwargs as in `token_nlls`."""
  nll_sum, count = token_nlls(texts, lm, **kwargs)
  return np.exp(nll_sum / count)


def mean_perplexity(texts: Sequence[str], lm: CausalLM, **kwargs: Any) -> float:
  """The paper's perplexity: the mean over texts of each text's perplexity."""
  return float(np.mean(perplexities(texts, lm, **kwargs)))
