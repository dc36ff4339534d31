"""The frozen BART autoencoder of LD4LG: text -> encoder latents [B, L, d] -> beam-search decoded text.

`Autoencoder.from_pretrained` loads a `FlaxBartForConditionalGeneration` and its tokenizer from the hub
(`facebook/bart-base`) or from a local folder, e.g. one written by `pretrain.pretrain_autoencoder`. The
params are only held, never trained here.

Compilation: `encode` pads each batch to a length bucket (multiples of `bucket_multiple`, capped at
`max_length`) and its row count up to a power of two (capped at `batch_size`), so the encoder compiles
once per (rows, bucket) shape and short sentences do not pay for `max_length`. `decode` compiles once per
(rows, latent length, options). `trace_counts` counts traces per function, for tests.

Empty strings are allowed: they encode to the two tokens `<s></s>` (BOS, EOS), as the tokenizer gives.
Texts longer than `max_length` tokens are truncated to `max_length - 1` tokens plus EOS and counted in
`encode_stats["num_truncated"]`.
"""
import collections
import functools
import math
import os
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import transformers

from ldlg.codecs.bart import beam_search
from ldlg.codecs.bart import decoder_step

DEFAULT_MODEL = "facebook/bart-base"

_OFFLINE_HINT = (
    "No pretrained BART can be downloaded on an offline machine. Either pass a local directory holding a "
    "Flax BART saved with save_pretrained (config.json, flax_model.msgpack and the tokenizer files), or "
    "train the project's own autoencoder with the autoencoder pretraining mode "
    "(ldlg.codecs.bart.pretrain.pretrain_autoencoder(cfg, texts_train, texts_valid, out_dir)) and pass "
    "its out_dir.")


def pytorch_weights(folder: pathlib.Path) -> pathlib.Path | None:
  """The PyTorch weights file of a model folder that has no Flax weights, else None."""
  if (folder / "flax_model.msgpack").exists():
    return None
  for name in ("model.safetensors", "pytorch_model.bin"):
    if (folder / name).exists():
      return folder / name
  return None


def _require_torch(folder: pathlib.Path) -> None:
  try:
    import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError as e:
    raise OSError(f"{folder} holds PyTorch weights as pytorch_model.bin, which only PyTorch can read. Save them "
                  "as safetensors (model.save_pretrained(dir, safe_serialization=True) in PyTorch), which loads "
                  "here without torch, or install torch.") from e


def bucket_lengths(max_length: int, multiple: int = 8) -> tuple[int, ...]:
  """The padded lengths `encode` uses: multiples of `multiple` below max_length, then max_length."""
  return tuple(range(multiple, max_length, multiple)) + (max_length,)


def _round_rows(n: int, batch_size: int) -> int:
  """Rows a chunk of n is padded to: the next power of two, at most batch_size."""
  return min(batch_size, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


class Autoencoder:
  """A frozen Flax BART used as a sentence autoencoder (latents = encoder last hidden states).

  Attributes:
    model: the `FlaxBartForConditionalGeneration` (its `params` are used, never updated).
    params: the params tree.
    tokenizer: the Hugging Face tokenizer.
    name: what it was loaded from.
    max_length: the most tokens (BOS and EOS included) a text is encoded with.
    latent_dim: d, the encoder width (d_model).
    buckets: the padded lengths of `encode` outputs.
    encode_stats: running counts {"num_texts", "num_truncated", "num_empty"} over all encode calls.
    trace_counts: traces per jitted function ("encode", "decode"), to check against recompiles.
  """

  def __init__(self, model: transformers.FlaxBartForConditionalGeneration, tokenizer, *,
               params=None, max_length: int = 64, name: str = "", bucket_multiple: int = 8):
    """Wraps a loaded model; `params` defaults to `model.params` (pass them for `_do_init=False`)."""
    config = model.config
    if max_length > config.max_position_embeddings:
      raise ValueError(f"max_length={max_length} exceeds the model's max_position_embeddings="
                       f"{config.max_position_embeddings}")
    if len(tokenizer) > config.vocab_size:
      raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
                       f"{config.vocab_size}: they do not belong together")
    self.model = model
    self.params = model.params if params is None else params
    self.tokenizer = tokenizer
    self.name = name
    self.max_length = max_length
    self.latent_dim = config.d_model
    self.buckets = bucket_lengths(max_length, bucket_multiple)
    self.spec = decoder_step.DecoderSpec.from_config(config, dtype=model.dtype)
    self.encode_stats = collections.Counter(num_texts=0, num_truncated=0, num_empty=0)
    self.trace_counts = collections.Counter()
    self._encode_jit = jax.jit(self._encode_fn)
    self._decode_jits = {}

  @classmethod
  def from_pretrained(cls, name_or_path: str | os.PathLike = DEFAULT_MODEL, max_length: int = 64,
                      dtype: Any = jnp.float32, **kwargs) -> "Autoencoder":
    """Loads model and tokenizer from a hub name (e.g. facebook/bart-base) or a local directory.

    Args:
      name_or_path: hub id or folder written by `save_pretrained` (model and tokenizer together).
      max_length: the most tokens per encoded text.
      dtype: the computation dtype (float32, or bfloat16 on accelerators; a name or a jnp dtype);
        params stay float32.
      **kwargs: passed to the constructor (bucket_multiple).
    Raises:
      OSError: it cannot be loaded; the message says what to do offline.
    """
    name = str(name_or_path)
    dtype = jnp.dtype(dtype)  # accepts "float32" / "bfloat16" from configs
    local = pathlib.Path(name).expanduser()
    # Hub ids are "name" or "org/name"; anything else path-like must be an existing folder.
    if not local.exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
      raise OSError(f"autoencoder directory {name!r} does not exist. {_OFFLINE_HINT}")
    if local.exists():
      name = str(local)
    weights = pytorch_weights(local) if local.is_dir() else None
    try:
      if weights is not None:
        # A BART saved by PyTorch (e.g. fine-tuned with the official code): Flax converts the weights on load;
        # safetensors needs no torch. (_do_init=False cannot convert, so the model is built with its params.)
        if weights.name == "pytorch_model.bin":
          _require_torch(local)
        model = transformers.FlaxBartForConditionalGeneration.from_pretrained(name, dtype=dtype, from_pt=True)
        params = model.params
      else:
        # _do_init=False skips a random initialisation that the loaded weights would replace anyway.
        model, params = transformers.FlaxBartForConditionalGeneration.from_pretrained(
            name, dtype=dtype, _do_init=False)
      tokenizer = transformers.AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
      if local.exists():  # Not a network problem: say what is wrong with the folder.
        raise OSError(f"could not load the BART autoencoder from the folder {name!r} ({type(e).__name__}: "
                      f"{str(e)[:400]}). It needs config.json, the tokenizer files and weights "
                      "(flax_model.msgpack, model.safetensors or pytorch_model.bin).") from e
      raise OSError(f"could not load the BART autoencoder {name!r} ({type(e).__name__}: {e}). "
                    f"{_OFFLINE_HINT}") from e
    return cls(model, tokenizer, params=params, max_length=max_length, name=name, **kwargs)

  @classmethod
  def from_config(cls, config: transformers.BartConfig, tokenizer, *, seed: int = 0,
                  max_length: int = 64, dtype: Any = jnp.float32, **kwargs) -> "Autoencoder":
    """A randomly initialised BART (for tests and benchmarks)."""
    dtype = jnp.dtype(dtype)
    model = transformers.FlaxBartForConditionalGeneration(config, dtype=dtype, _do_init=False)
    params = jax.jit(model.init_weights, static_argnums=1)(jax.random.PRNGKey(seed), (1, 1))
    return cls(model, tokenizer, params=params, max_length=max_length,
               name=f"random-init(seed={seed})", **kwargs)

  # ---------------------------------------------------------------------------------------- encode

  def _encode_fn(self, params, input_ids, attention_mask):
    self.trace_counts["encode"] += 1  # Python side effect: runs only while tracing.
    out = self.model.encode(input_ids, attention_mask, params=params).last_hidden_state
    return jnp.where(attention_mask[..., None] > 0, out, 0).astype(jnp.float32)

  def encode_ids(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> jax.Array:
    """Encoder latents of already tokenized, padded ids (compiled once per shape).

    Args:
      input_ids: [B, L] int.
      attention_mask: [B, L] {0, 1} or bool.
    Returns:
      [B, L, d] float32, zero at padded positions.
    """
    input_ids = np.asarray(input_ids, np.int32)
    attention_mask = np.asarray(attention_mask).astype(np.int32)
    if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
      raise ValueError(f"input_ids and attention_mask must both be [B, L], got {input_ids.shape} and "
                       f"{attention_mask.shape}")
    if input_ids.shape[1] > self.model.config.max_position_embeddings:
      raise ValueError(f"L={input_ids.shape[1]} exceeds max_position_embeddings="
                       f"{self.model.config.max_position_embeddings}")
    return self._encode_jit(self.params, input_ids, attention_mask)

  def tokenize(self, texts: Sequence[str]) -> tuple[list[list[int]], int]:
    """Token ids (BOS ... EOS) per text, truncated to max_length; also the number truncated."""
    if isinstance(texts, str):
      raise ValueError("encode takes a list of strings, got a single str; wrap it in a list: [text]")
    for i, t in enumerate(texts):
      if not isinstance(t, str):
        raise ValueError(f"texts[{i}] is {type(t).__name__}, not str")
    if not texts:
      return [], 0
    ids = self.tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
    eos = self.tokenizer.eos_token_id
    # Same result as the tokenizer's own truncation (content cut, EOS kept), but counted.
    truncated = [len(x) > self.max_length for x in ids]
    ids = [x[:self.max_length - 1] + [eos] if cut else x for x, cut in zip(ids, truncated)]
    return ids, sum(truncated)

  def bucket(self, length: int) -> int:
    """The smallest bucket >= length."""
    for b in self.buckets:
      if b >= length:
        return b
    raise ValueError(f"length {length} exceeds max_length={self.max_length}")

  def encode(self, texts: Sequence[str], *, batch_size: int = 64,
             return_stats: bool = False):
    """Tokenizes and encodes texts.

    Args:
      texts: list of B strings ("" encodes to BOS, EOS).
      batch_size: rows per encoder call.
      return_stats: also return {"num_texts", "num_truncated", "num_empty", "lengths"} of this call.
    Returns:
      latents: [B, L, d] float32 (zero at padding), L = the bucket of the longest text.
      mask: [B, L] bool, True at real token positions.
      (stats, if return_stats.)
    """
    ids, num_truncated = self.tokenize(texts)
    lengths = np.array([len(x) for x in ids], np.int32)
    n = len(ids)
    width = self.bucket(int(lengths.max())) if n else self.buckets[0]
    latents = np.zeros((n, width, self.latent_dim), np.float32)
    mask = np.zeros((n, width), bool)
    pad = self.tokenizer.pad_token_id
    for lo in range(0, n, batch_size):
      chunk = ids[lo:lo + batch_size]
      rows = _round_rows(len(chunk), batch_size)
      length = self.bucket(max(len(x) for x in chunk))
      arr = np.full((rows, length), pad, np.int32)
      att = np.zeros((rows, length), np.int32)
      for r, x in enumerate(chunk):
        arr[r, :len(x)] = x
        att[r, :len(x)] = 1
      att[len(chunk):, 0] = 1  # filler rows: one visible position keeps their softmax well defined
      out = np.asarray(self.encode_ids(arr, att))
      latents[lo:lo + len(chunk), :length] = out[:len(chunk)]
      mask[lo:lo + len(chunk), :length] = att[:len(chunk)] > 0
    stats = dict(num_texts=n, num_truncated=num_truncated,
                 num_empty=sum(1 for t in texts if not t), lengths=lengths)
    for key in ("num_texts", "num_truncated", "num_empty"):
      self.encode_stats[key] += stats[key]
    return (latents, mask, stats) if return_stats else (latents, mask)

  # ---------------------------------------------------------------------------------------- decode

  def decode_options(self, **overrides) -> beam_search.DecodeOptions:
    """DecodeOptions with this model's special tokens (BART generation config) and the given overrides."""
    config = self.model.config
    gen = getattr(self.model, "generation_config", None)

    def setting(name, default=None):
      # Newer checkpoints keep generation settings in generation_config, older ones (bart-base) in config.
      value = getattr(gen, name, None) if gen is not None else None
      return value if value is not None else getattr(config, name, default)

    tokens = dict(decoder_start_token_id=setting("decoder_start_token_id"),
                  eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
                  forced_bos_token_id=setting("forced_bos_token_id"),
                  forced_eos_token_id=setting("forced_eos_token_id"))
    tokens.update(overrides)
    return beam_search.DecodeOptions(**tokens)

  def _decode_fn(self, opts, params, latents, mask):
    self.trace_counts["decode"] += 1
    return beam_search.bart_generate(params, self.spec, latents, mask, opts)

  def decode_ids(self, latents: np.ndarray, mask: np.ndarray, *, batch_size: int = 64,
                 **options) -> tuple[np.ndarray, np.ndarray]:
    """Beam-search decodes latents to token ids.

    Args:
      latents: [B, L, d] float.
      mask: [B, L] bool, each row with at least one True.
      batch_size: rows per compiled call (a last partial chunk is padded, so one compile per L).
      **options: `DecodeOptions` fields (num_beams, max_length, min_length, no_repeat_ngram_size,
        repetition_penalty, length_penalty, early_stopping, forced_bos_token_id, ...).
    Returns:
      sequences: [B, T] int32 (decoder start token first, pad after EOS); scores: [B] float32.
    """
    latents = np.asarray(latents, np.float32)
    mask = np.asarray(mask, bool)
    if latents.ndim != 3 or latents.shape[-1] != self.latent_dim:
      raise ValueError(f"latents must be [B, L, {self.latent_dim}], got {latents.shape}")
    if mask.shape != latents.shape[:2]:
      raise ValueError(f"mask must be [B, L] = {latents.shape[:2]}, got {mask.shape}")
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
      raise ValueError(f"mask rows {empty[:10].tolist()} have no valid position; every latent needs "
                       "at least one")
    opts = self.decode_options(**options)
    if opts not in self._decode_jits:
      self._decode_jits[opts] = jax.jit(functools.partial(self._decode_fn, opts))
    fn = self._decode_jits[opts]
    n = latents.shape[0]
    seqs = np.full((n, opts.max_length), opts.pad_token_id, np.int32)
    scores = np.zeros((n,), np.float32)
    for lo in range(0, n, batch_size):
      hi = min(n, lo + batch_size)
      rows = _round_rows(hi - lo, batch_size)
      lat = np.zeros((rows,) + latents.shape[1:], np.float32)
      msk = np.zeros((rows, latents.shape[1]), bool)
      msk[:, 0] = True
      lat[:hi - lo], msk[:hi - lo] = latents[lo:hi], mask[lo:hi]
      s, sc = fn(self.params, lat, msk)
      seqs[lo:hi], scores[lo:hi] = np.asarray(s)[:hi - lo], np.asarray(sc)[:hi - lo]
    return seqs, scores

  def decode(self, latents: np.ndarray, mask: np.ndarray, *, num_beams: int = 4, max_length: int = 64,
             min_length: int = 0, no_repeat_ngram_size: int = 3, repetition_penalty: float = 1.2,
             length_penalty: float = 1.0, batch_size: int = 64, **options) -> list[str]:
    """Decodes latents [B, L, d] with mask [B, L] to B strings (defaults: the LD4LG paper's decoding).

    `num_beams=1` is greedy. Other `DecodeOptions` fields (early_stopping, forced_bos_token_id, ...)
    may be passed by keyword. Special tokens are dropped and whitespace is kept as the tokenizer
    decodes it (no clean-up), then stripped.
    """
    seqs, _ = self.decode_ids(latents, mask, batch_size=batch_size, num_beams=num_beams,
                              max_length=max_length, min_length=min_length,
                              no_repeat_ngram_size=no_repeat_ngram_size,
                              repetition_penalty=repetition_penalty, length_penalty=length_penalty,
                              **options)
    return [t.strip() for t in self.tokenizer.batch_decode(
        seqs.tolist(), skip_special_tokens=True, clean_up_tokenization_spaces=False)]

  def reconstruct(self, texts: Sequence[str], *, batch_size: int = 64, **decode_kwargs) -> list[str]:
    """decode(encode(texts)); decode_kwargs as for `decode`."""
    latents, mask = self.encode(texts, batch_size=batch_size)
    return self.decode(latents, mask, batch_size=batch_size, **decode_kwargs)
