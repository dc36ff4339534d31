"""Text cleaning/validation: each bad-input behaviour is counted or raises, as ldlg/data/text.py says."""

import numpy as np
import pytest

from ldlg.data import text as text_lib
from ldlg.data.testing import make_word_tokenizer


@pytest.mark.parametrize("s", [
    "There is a place in the city centre , Alimentum , that is not family - friendly . ",
    "It 's a lovely film , is n't it ? I 'm sure we 've seen it ; they 're right ! ' quoted '",
    "no artifacts here.", "",
])
def test_clean_up_tokenization_matches_transformers(s):
  from transformers import PreTrainedTokenizerBase
  assert text_lib.clean_up_tokenization(s) == PreTrainedTokenizerBase.clean_up_tokenization(s)


def test_empty_and_whitespace_rows_are_dropped_and_counted():
  records = [{"text": "a b"}, {"text": ""}, {"text": "  \t\n"}, {"text": b"   "}, {"text": "  c  "}]
  kept, index, stats = text_lib.clean_records(records)
  assert [r["text"] for r in kept] == ["a b", "c"]  # stripped
  np.testing.assert_array_equal(index, [0, 4])
  assert (stats.total, stats.kept, stats.dropped_empty, stats.dropped) == (5, 2, 3, 3)


def test_invalid_utf8_replace_keeps_and_counts():
  bad = b"caf\xe9 au lait"  # latin-1 byte, invalid UTF-8
  kept, _, stats = text_lib.clean_records([{"text": bad}, {"text": "ok".encode()}])
  assert kept[0]["text"] == "caf\ufffd au lait" and kept[1]["text"] == "ok"
  assert (stats.kept, stats.invalid_utf8_replaced, stats.dropped_invalid_utf8) == (2, 1, 0)


def test_invalid_utf8_drop_drops_and_counts():
  kept, index, stats = text_lib.clean_records([{"text": b"\xff\xfe"}, {"text": "fine"}],
                                              invalid_utf8="drop")
  assert [r["text"] for r in kept] == ["fine"] and index.tolist() == [1]
  assert (stats.total, stats.kept, stats.dropped_invalid_utf8, stats.dropped) == (2, 1, 1, 1)
  with pytest.raises(ValueError, match="'replace' or 'drop'"):
    text_lib.clean_records([], invalid_utf8="ignore")


def test_unknown_label_raises_naming_row_and_allowed_labels():
  records = [{"text": "a", "label": 0}, {"text": "b", "label": 3}, {"text": "c", "label": 4}]
  with pytest.raises(ValueError, match=r"row 2: label 4 is not in the dataset's label set \[0, 1, 2, 3\]"):
    text_lib.clean_records(records, label_set=range(4))
  kept, _, _ = text_lib.clean_records(records)  # no label set: any integer label passes
  assert [r["label"] for r in kept] == [0, 3, 4]


def test_label_type_and_consistency_errors():
  with pytest.raises(ValueError, match="row 0: label must be an integer"):
    text_lib.clean_records([{"text": "a", "label": "World"}])
  with pytest.raises(ValueError, match="row 1: has no label but earlier rows do"):
    text_lib.clean_records([{"text": "a", "label": 1}, {"text": "b"}])
  with pytest.raises(TypeError, match="row 0: 'text' must be str or bytes"):
    text_lib.clean_records([{"text": 3}])
  with pytest.raises(ValueError, match="row 0: record has no 'text'"):
    text_lib.clean_records([{"sentence": "a"}])


def test_labels_become_python_ints_and_extra_fields_pass_through():
  kept, _, _ = text_lib.clean_records([{"text": "q", "label": np.int64(1), "source": b"src"}],
                                      label_set=[0, 1])
  assert kept == [{"text": "q", "label": 1, "source": "src"}]
  assert type(kept[0]["label"]) is int


def test_truncation_counted_from_tokenizer_lengths():
  texts = ["one two three", "one two three four five six seven", "one"]
  tok = make_word_tokenizer(texts)
  lengths = text_lib.token_lengths(tok, texts, batch_size=2)
  np.testing.assert_array_equal(lengths, [5, 9, 3])  # words + <s> + </s>
  stats = text_lib.count_truncated(text_lib.TextStats(kept=3, total=3), lengths, max_length=5)
  assert (stats.truncated, stats.max_tokens, stats.max_length) == (1, 9, 5)
  assert stats.mean_tokens == pytest.approx(17 / 3)
  assert "1 longer than 5 tokens" in stats.summary()
  assert stats.as_dict()["truncated"] == 1 and stats.as_dict()["dropped"] == 0
