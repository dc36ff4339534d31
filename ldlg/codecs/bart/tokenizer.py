"""Training a byte-level BPE tokenizer with BART's special tokens, for domains without a pretrained BART.

The result is saved as a `BartTokenizerFast` (vocab.json, merges.txt, tokenizer.json, tokenizer_config.json),
so `transformers.AutoTokenizer.from_pretrained(out_dir)` loads it exactly as it loads `facebook/bart-base`'s.
Special tokens take ids 0..4 in BART's order: <s>=0 (BOS), <pad>=1, </s>=2 (EOS, also BART's decoder start
token), <unk>=3, <mask>=4 (bart-base puts <mask> last; only its name matters to the code).
"""
import os
import pathlib
from typing import Iterable

import tokenizers
import transformers

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike, *,
                    min_frequency: int = 2) -> transformers.PreTrainedTokenizerFast:
  """Trains a byte-level BPE tokenizer on `texts` and saves it in Hugging Face format.

  Args:
    texts: training sentences (the iterable is consumed once).
    vocab_size: target vocabulary size, special tokens and the 256 byte symbols included; must exceed
      261 (the 256 bytes and 5 special tokens). A small corpus may end with fewer merges than asked.
    out_dir: folder to write into (created if missing).
    min_frequency: a pair must occur this often to be merged.
  Returns:
    The saved tokenizer, reloaded through `AutoTokenizer.from_pretrained(out_dir)`.
  """
  if vocab_size <= 256 + len(SPECIAL_TOKENS):
    raise ValueError(f"vocab_size={vocab_size} is too small: byte-level BPE needs the 256 byte symbols "
                     f"and {len(SPECIAL_TOKENS)} special tokens, so use at least 512 or so")
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  # add_prefix_space=False matches bart-base (the first word is tokenized without a leading space).
  bpe = tokenizers.ByteLevelBPETokenizer(add_prefix_space=False)
  bpe.train_from_iterator(iter(texts), vocab_size=vocab_size, min_frequency=min_frequency,
                          special_tokens=list(SPECIAL_TOKENS), show_progress=False)
  for i, token in enumerate(SPECIAL_TOKENS):
    if bpe.token_to_id(token) != i:
      raise RuntimeError(f"special token {token} got id {bpe.token_to_id(token)}, expected {i}")
  bpe.save_model(str(out_dir))  # vocab.json + merges.txt, the files BartTokenizerFast is built from
  fast = transformers.BartTokenizerFast(
      vocab_file=str(out_dir / "vocab.json"), merges_file=str(out_dir / "merges.txt"),
      add_prefix_space=False)
  fast.save_pretrained(str(out_dir))
  return transformers.AutoTokenizer.from_pretrained(str(out_dir))
