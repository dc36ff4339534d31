"""E2E slot error: MR parsing in both shipped forms, the per-slot matching rule, per-example and corpus rates."""
import math

import pytest

from ldlg.evaluation import slot_error

MR_OFFICIAL = ("name[The Eagle], eatType[coffee shop], food[Japanese], priceRange[less than £20], "
               "customer rating[low], area[riverside], familyFriendly[yes], near[Burger King]")
MR_SRC1 = ("name : The Eagle | Type : coffee shop | food : Japanese | price : less than £ 20 | "
           "customer rating : low | area : riverside | family friendly : yes | near : Burger King")
FULL = ("The Eagle is a cheap, family-friendly Japanese coffee shop by the riverside near Burger King. "
        "It has a low customer rating.")


def test_both_mr_forms_parse_to_the_same_slots():
  official, src1 = slot_error.parse_mr(MR_OFFICIAL), slot_error.parse_mr(MR_SRC1)
  assert set(official) == set(slot_error.SLOTS)
  assert official["name"] == src1["name"] == "The Eagle"
  assert official["eatType"] == src1["eatType"] == "coffee shop"
  # Values may differ in spacing; the matching normalizes them, so both MRs score a text the same.
  assert slot_error.missing_slots(official, FULL) == slot_error.missing_slots(src1, FULL) == []


def test_rate_counts_missing_values():
  assert slot_error.slot_error_rate(MR_OFFICIAL, FULL) == 0.0
  text = "A cheap family friendly Japanese coffee shop by the river with a low customer rating."
  assert set(slot_error.missing_slots(MR_OFFICIAL, text)) == {"name", "near"}
  assert slot_error.slot_error_rate(MR_OFFICIAL, text) == pytest.approx(2 / 8)
  assert slot_error.slot_error_rate(MR_OFFICIAL, "") == 1.0
  assert math.isnan(slot_error.slot_error_rate("", "anything"))


@pytest.mark.parametrize("slot,value,text,realized", [
    ("name", "Café Sicilia", "near cafe sicilia", True),            # accents and case
    ("name", "The Eagle", "the eagles", False),                     # whole words only
    ("near", "Burger King", "close to Burger  King.", True),
    ("area", "city centre", "in the city center", True),
    ("area", "riverside", "in the city centre", False),
    ("food", "Fast food", "they serve fast-food", True),
    ("eatType", "pub", "a public house", False),
    ("priceRange", "less than £20", "meals for less than £20", True),
    ("priceRange", "less than £ 20", "it is cheap", True),
    ("priceRange", "cheap", "low-priced dishes", True),
    ("priceRange", "cheap", "an expensive menu", False),
    ("priceRange", "£20-25", "moderately priced", True),
    ("priceRange", "£ 20 - 25", "costs £20-25 per head", True),
    ("priceRange", "more than £30", "prices are high", True),
    ("priceRange", "high", "a high customer rating", False),
    ("customer rating", "5 out of 5", "a five star restaurant", True),
    ("customer rating", "5 out of 5", "it is highly rated", True),
    ("customer rating", "high", "rated 5 out of 5", True),
    ("customer rating", "1 out of 5", "rated 5 out of 5", False),
    ("customer rating", "low", "with low prices", False),           # 'low' must be near a rating word
    ("customer rating", "average", "the reviews are average", True),
    ("familyFriendly", "yes", "it is kid friendly", True),
    ("familyFriendly", "yes", "good for children", True),
    ("familyFriendly", "yes", "it isn't family-friendly", False),
    ("familyFriendly", "yes", "a quiet pub", False),
    ("familyFriendly", "no", "it is not family - friendly", True),
    ("familyFriendly", "no", "it isn't kid friendly", True),
    ("familyFriendly", "no", "adults only", True),
    ("familyFriendly", "no", "it is family friendly", False),
])
def test_slot_rule(slot, value, text, realized):
  assert slot_error.slot_realized(slot, value, text) is realized


def test_corpus_rate_is_micro_and_reports_macro_and_per_slot():
  mrs = ["name[A], area[riverside]", "name[B], food[Italian], near[C], familyFriendly[no]"]
  texts = ["A is by the river.", "B serves French food."]  # misses: none; food, near, familyFriendly
  out = slot_error.corpus_slot_error(mrs, texts)
  assert out["num_values"] == 6 and out["num_missing"] == 3
  assert out["slot_error_rate"] == pytest.approx(3 / 6)
  assert out["mean_example_rate"] == pytest.approx((0 + 3 / 4) / 2)
  assert out["per_slot"] == {"name": 0.0, "food": 1.0, "area": 0.0, "familyFriendly": 1.0, "near": 1.0}


def test_unknown_slot_or_value_is_an_error():
  with pytest.raises(ValueError, match="unknown E2E slot"):
    slot_error.parse_mr("colour[red]")
  with pytest.raises(ValueError, match="priceRange"):
    slot_error.slot_realized("priceRange", "free", "it is free")
