"""Tests of the byte-level BPE tokenizer trained for offline domains: BART-compatible special tokens,
loading through AutoTokenizer, and exact round trips on real sentences."""
import pytest
import transformers

from ldlg.codecs.bart import tokenizer as tokenizer_lib


@pytest.fixture(scope="module")
def sentences(e2e_valid_sentences):
  return e2e_valid_sentences


@pytest.fixture(scope="module")
def trained(sentences, tmp_path_factory):
  out = tmp_path_factory.mktemp("tokenizer")
  return tokenizer_lib.train_tokenizer(sentences, 1000, out), out


def test_special_tokens_have_bart_ids(trained):
  tok, _ = trained
  assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
  assert tok.mask_token_id == 4
  assert [tok.convert_ids_to_tokens(i) for i in range(5)] == list(tokenizer_lib.SPECIAL_TOKENS)


def test_autotokenizer_loads_a_bart_tokenizer(trained):
  tok, out = trained
  again = transformers.AutoTokenizer.from_pretrained(str(out))
  assert isinstance(again, transformers.BartTokenizerFast)
  assert len(again) == len(tok) <= 1000
  text = "Alimentum is near the river ."
  assert again(text)["input_ids"] == tok(text)["input_ids"]


def test_encoding_wraps_in_bos_eos_and_round_trips(trained, sentences):
  tok, _ = trained
  ids = tok(sentences)["input_ids"]
  assert all(x[0] == 0 and x[-1] == 2 for x in ids)
  decoded = tok.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
  assert [d.strip() for d in decoded] == sentences  # byte-level BPE is lossless
  assert tok("")["input_ids"] == [0, 2]
  # Merges were learned: far fewer tokens than bytes.
  n_tokens = sum(len(x) - 2 for x in ids)
  n_bytes = sum(len(s.encode()) for s in sentences)
  assert n_tokens < 0.4 * n_bytes


def test_unseen_characters_still_encode(trained):
  tok, _ = trained
  text = "Ünïcødé — ☕ 東京"
  ids = tok(text)["input_ids"]
  assert tok.unk_token_id not in ids  # bytes cover everything
  assert tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False) == text


def test_too_small_vocab_is_refused(tmp_path):
  with pytest.raises(ValueError, match="vocab_size=200 is too small"):
    tokenizer_lib.train_tokenizer(["a b c"], 200, tmp_path)
