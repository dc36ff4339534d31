"""MBR selection picks the consensus candidate; the seq2seq report's numbers on hand-checkable inputs."""
import pytest

from ldlg.evaluation import mbr

BASE = "the quick brown fox jumps over the lazy dog"


def _variants():
  """The base sentence with one different word changed in each variant: the base is the consensus."""
  words = BASE.split()
  out = []
  for i, new in ((1, "slow"), (3, "cat"), (7, "sleepy")):
    changed = list(words)
    changed[i] = new
    out.append(" ".join(changed))
  return out


def test_mbr_picks_the_consensus_candidate():
  variants = _variants()
  candidates = variants[:2] + [BASE] + variants[2:] + ["an unrelated sentence about weather"]
  scores = mbr.mbr_scores(candidates)
  assert mbr.mbr_select(candidates) == 2
  assert scores[2] > max(s for i, s in enumerate(scores) if i != 2)
  assert mbr.mbr_decode([candidates, ["x y z", "x y z"]]) == [BASE, "x y z"]
  assert mbr.mbr_select(["same text", "same text", "same text"]) == 0  # ties: the first


def test_seq2seq_report_multi_reference_and_diversity():
  hyps = ["the cat sat on the mat", "a dog ran"]
  refs = [["something else entirely", "the cat sat on the mat"], "a dog ran"]
  report = mbr.seq2seq_report(hyps, refs)
  assert report["bleu"] == pytest.approx(100.0)    # each hypothesis equals one of its references
  assert report["rouge_l"] == pytest.approx(1.0)   # the best reference counts
  assert report["dist_1"] == pytest.approx((5 / 6 + 1.0) / 2)  # "the" repeats in the first text
  assert report["div_4"] == pytest.approx(1.0)
  keyed = mbr.seq2seq_report({"s1": hyps[0], "s2": hyps[1]}, {"s2": refs[1], "s1": refs[0]})
  assert keyed == report


def test_seq2seq_report_candidates_and_slot_error():
  report = mbr.seq2seq_report(
      ["The Mill is a pub."], [["The Mill is a pub near the river."]],
      candidates_by_source=[["The Mill is a pub.", "The Mill is a pub."]],
      meaning_representations=["name[The Mill], eatType[pub], area[riverside]"])
  assert report["self_bleu"] == pytest.approx(100.0)  # identical candidates: no diversity
  assert report["candidates_div_4"] == pytest.approx(0.5)  # 2 distinct of 4 pooled 4-grams
  assert report["slot_error_rate"] == pytest.approx(1 / 3)  # area missing
  with pytest.raises(ValueError, match="one entry per source"):
    mbr.seq2seq_report(["a", "b"], [["a"]])
