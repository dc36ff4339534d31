"""BART noising (Lewis et al. 2020, §2.2) for denoising-autoencoder pretraining, on host (numpy).

Text infilling: spans with Poisson(λ) lengths are drawn until `mask_ratio` of the content tokens are
covered; each span is replaced by ONE `<mask>` (so the model must also infer how many tokens are
missing), and a 0-length span inserts a `<mask>`. A fraction `random_ratio` of these masks (span and
inserted) become a random token instead (fairseq's `mask_random`). Token masking: a further
`token_mask_ratio` of the tokens are replaced one-for-one by `<mask>`. BOS/EOS are never touched.

For LD4LG the decoder must reconstruct clean sentences from their latents, so `noise_batch` leaves a
fraction `clean_fraction` of the examples uncorrupted (the identity task); see `pretrain.py`.
Every draw comes from the `np.random.Generator` passed in, so a step's batch is reproducible.
"""
import numpy as np


def bart_noise(ids: np.ndarray, rng: np.random.Generator, *, mask_id: int, vocab_size: int,
               mask_ratio: float = 0.3, poisson_lambda: float = 3.0, random_ratio: float = 0.1,
               token_mask_ratio: float = 0.0, first_regular_id: int = 5) -> np.ndarray:
  """Corrupts one tokenized sentence.

  Args:
    ids: [n + 2] int, `<s> t_1 .. t_n </s>`.
    rng: the random generator.
    mask_id: id of `<mask>`.
    vocab_size: random replacement tokens are drawn from [first_regular_id, vocab_size).
    mask_ratio: fraction of content tokens covered by infilled spans (BART: 0.3).
    poisson_lambda: mean span length (BART: 3).
    random_ratio: fraction of span/inserted masks replaced by a random token instead (BART: 0.1).
    token_mask_ratio: fraction of content tokens (outside spans) replaced one-for-one by `<mask>`.
    first_regular_id: the first id that is not a special token.
  Returns:
    [m + 2] int, the corrupted sentence, same BOS/EOS; m may differ from n.
  """
  ids = np.asarray(ids)
  if ids.ndim != 1 or ids.size < 2:
    raise ValueError(f"ids must be a 1-D <s> ... </s> sequence, got shape {ids.shape}")
  content = ids[1:-1].copy()
  n = content.size
  num_to_mask = int(round(mask_ratio * n))
  masked = np.zeros(n, bool)
  span_start = np.zeros(n, bool)
  num_inserts = 0
  if num_to_mask > 0:
    lengths = []
    while sum(lengths) < num_to_mask:
      lengths.append(int(rng.poisson(poisson_lambda)))
    lengths[-1] -= sum(lengths) - num_to_mask
    for length in lengths:
      if length == 0:
        num_inserts += 1
        continue
      length = min(length, n)
      start = int(rng.integers(0, n - length + 1))
      masked[start:start + length] = True
      span_start[start] = True
  # A run of masked positions made of overlapping spans starts a span where it begins.
  span_start |= masked & ~np.concatenate([[False], masked[:-1]])
  if token_mask_ratio > 0:
    single = (~masked) & (rng.random(n) < token_mask_ratio)
    content = np.where(single, mask_id, content)
  replacement = np.where(rng.random(n) < random_ratio,
                         rng.integers(first_regular_id, vocab_size, size=n), mask_id)
  # Keep unmasked tokens, replace each span's first token by its mask, drop the rest of the span.
  out = np.where(span_start, replacement, content)[~masked | span_start]
  if num_inserts:
    positions = np.sort(rng.integers(0, out.size + 1, size=num_inserts))
    inserted = np.where(rng.random(num_inserts) < random_ratio,
                        rng.integers(first_regular_id, vocab_size, size=num_inserts), mask_id)
    out = np.insert(out, positions, inserted)
  return np.concatenate([ids[:1], out, ids[-1:]]).astype(ids.dtype)


def noise_batch(batch_ids: list[np.ndarray], rng: np.random.Generator, *, clean_fraction: float,
                max_length: int, **noise_kwargs) -> list[np.ndarray]:
  """Corrupts a batch, leaving each example clean with probability `clean_fraction`.

  Args:
    batch_ids: tokenized sentences (`<s> ... </s>`), each at most max_length long.
    rng: the random generator.
    clean_fraction: probability that an example is left uncorrupted.
    max_length: corrupted sentences longer than this (insertions) are cut, keeping `</s>` last.
    **noise_kwargs: `bart_noise` arguments.
  Returns:
    The encoder inputs, one array per example.
  """
  clean = rng.random(len(batch_ids)) < clean_fraction
  out = []
  for ids, keep in zip(batch_ids, clean):
    x = np.asarray(ids) if keep else bart_noise(ids, rng, **noise_kwargs)
    if x.size > max_length:
      x = np.concatenate([x[:max_length - 1], x[-1:]])
    out.append(x)
  return out
