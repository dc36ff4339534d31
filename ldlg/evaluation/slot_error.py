r"""Slot error rate of E2E data-to-text outputs: the share of the meaning representation's values the text misses.

An E2E meaning representation (MR) is a set of (slot, value) pairs, in either of the two forms the data ships:
  official:  name[The Eagle], eatType[coffee shop], priceRange[less than £20], familyFriendly[yes]
  src1 (Diffusion-LM / LD4LG files):  name : The Eagle | Type : coffee shop | price : less than £ 20 | ...
Slot names are mapped to the official ones (Type -> eatType, price -> priceRange, family friendly ->
familyFriendly, customerRating / customer rating -> customer rating).

Normalization (text and values alike): "n't" becomes " not"; accents are dropped (Café = Cafe); lowercase;
"£" is split from numbers; every run of characters other than letters, digits and "£" is one space (so
"family-friendly", "family - friendly" and "family friendly" are equal, and "£20-25" = "£ 20 - 25"). Matching
is on whole words (a phrase must start and end at word boundaries).

The rule, slot by slot (a value is *realized* when the rule finds it; the slot error counts the others):
- name, near, food, area, eatType: the value's normalized string occurs as a phrase. Small variants: eatType
  "coffee shop" also as "coffeeshop"; area "city centre" also as "city center", "centre of the city",
  "town centre", "centre"/"center", "central(ly)"; area "riverside" also as "river side", "river...";
  food "Fast food" also as "fastfood", "English" also as "British". Case-insensitive throughout.
- priceRange, by level (a price word is pric... or cost...; "near" = within three words, either order):
    cheap, less than £20  <- "cheap...", "inexpensive", "affordabl...", "budget", low... near a price word,
                             "less than/under/below/lower than (£) 20"
    moderate, £20-25      <- "moderate...", "reasonabl...", "mid range", average/medium/mid near a price word,
                             "(£) 20 (to) (£) 25"
    high, more than £30   <- "expensive", "pricey", "costly", "high end", "upscale", "luxur...", high... near
                             a price word, "more than/over/above/higher than (£) 30", "30 (pounds) or more"
  Any phrase of the value's level realizes it (so "£20-25" is realized by "moderately priced").
- customer rating, by level (a bare "low"/"high"/"average" must be near a rating word, since "low"/"high"
  also describe prices):
    low, 1 out of 5       <- "1 out of 5", "one star", "1 star", "poor...", "bad", "low(ly) rated", low...
                             near a rating word (rat..., review..., scor..., star..., rank...)
    average, 3 out of 5   <- "3 out of 5", "three star(s)", "average" near a rating word, "mediocre", "ok",
                             "okay", "decent", "middling"
    high, 5 out of 5      <- "5 out of 5", "five star(s)", "excellent", "top rated", "well rated",
                             "highly rated", high... near a rating word
  Numeric forms ("x out of 5", "x star") are accepted in digits or words.
- familyFriendly: a family word is one of family, families, kid(s), child, children.
    no  <- a negation (not, no, non, never, isn't, aren't, without) within three words before a family word,
           or "adult(s) only", or "(family|kid|child) unfriendly".
    yes <- a family word occurs and the "no" rule does not fire.

Per example: missing values / values in the MR (NaN for an MR with no slot). Corpus: total missing / total
values (micro average, as E2E evaluations report it), with the macro mean over examples and the miss rate of
each slot. Only *omissions* are counted; hallucinated extra values (which some SER definitions add) are not.
Paraphrases outside the lists above count as misses, and the loose patterns can also accept a value wrongly
(e.g. "high ... price" in "high rating and price"). For scale: the E2E valid references (src1_valid.txt,
4,672 pairs) score 8.2% (human references do omit values), the same references shuffled across MRs 70%.
"""
from __future__ import annotations

import math
import re
import unicodedata
from typing import Mapping, Sequence

SLOTS = ("name", "eatType", "food", "priceRange", "customer rating", "area", "familyFriendly", "near")
_SLOT_ALIASES = {
    "name": "name", "eattype": "eatType", "type": "eatType", "food": "food", "pricerange": "priceRange",
    "price": "priceRange", "customer rating": "customer rating", "customerrating": "customer rating",
    "area": "area", "familyfriendly": "familyFriendly", "family friendly": "familyFriendly", "near": "near",
}
_BRACKET_MR = re.compile(r"([A-Za-z][A-Za-z ]*?)\s*\[([^\]]*)\]")


def normalize(text: str) -> str:
  """The normalization of the module docstring; returns words separated by single spaces."""
  text = re.sub(r"n\s*['’]\s*t\b", " not", text)
  text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
  text = text.lower().replace("£", " £ ")
  return " ".join(re.sub(r"[^\w£]+|_", " ", text).split())


def parse_mr(mr: str) -> dict[str, str]:
  """{official slot name: value} from an MR in the official or the src1 form (values as written)."""
  pairs: list[tuple[str, str]] = []
  if "[" in mr:
    pairs = [(k, v) for k, v in _BRACKET_MR.findall(mr)]
  else:
    for field in mr.split("|"):
      if ":" in field:
        key, value = field.split(":", 1)
        pairs.append((key, value))
  out: dict[str, str] = {}
  for key, value in pairs:
    slot = _SLOT_ALIASES.get(" ".join(key.lower().split()))
    if slot is None:
      raise ValueError(f"unknown E2E slot {key.strip()!r} in MR {mr!r}; known: {SLOTS}")
    out[slot] = " ".join(value.split())
  return out


def _phrase(words: str) -> str:
  """A regex for a normalized phrase on word boundaries."""
  return r"(?<![\w£])" + words + r"(?![\w£])"


def _any(patterns: Sequence[str], text: str) -> bool:
  return any(re.search(_phrase(p), text) for p in patterns)


_NUM = {"1": "(?:1|one)", "3": "(?:3|three)", "5": "(?:5|five)"}
_RATING_WORD = r"(?:rat\w*|review\w*|scor\w*|star\w*|rank\w*)"


def _near(a: str, b: str) -> list[str]:
  """Patterns for `a` and `b` within three words of each other, either order."""
  return [a + r"(?: \w+){0,3} " + b, b + r"(?: \w+){0,3} " + a]


def _rating_patterns(n: str, extra: Sequence[str], level_word: str) -> list[str]:
  return [_NUM[n] + r" (?:out )?of " + _NUM["5"], _NUM[n] + r" stars?", *extra,
          *_near(level_word, _RATING_WORD)]


_PRICE_WORD = r"(?:pric\w*|cost\w*)"
_PRICE = {
    "cheap": [r"cheap\w*", "inexpensive", r"affordabl\w*", "budget", *_near(r"low\w*", _PRICE_WORD),
              r"(?:less than|under|below|lower than) (?:£ )?20"],
    "moderate": [r"moderate\w*", r"reasonabl\w*", "mid range", *_near(r"(?:average|medium|mid)", _PRICE_WORD),
                 r"(?:£ )?20 (?:to )?(?:£ )?25"],
    "high": ["expensive", "pricey", "costly", "high end", "upscale", r"luxur\w*", *_near(r"high\w*", _PRICE_WORD),
             r"(?:more than|over|above|higher than) (?:£ )?30",
             r"(?:£ )?30 (?:pounds )?(?:or|and) (?:more|above|over)"],
}
_PRICE_LEVEL = {"cheap": "cheap", "less than £ 20": "cheap", "moderate": "moderate", "£ 20 25": "moderate",
                "high": "high", "more than £ 30": "high"}
_RATING = {
    "low": _rating_patterns("1", [r"poor\w*", "bad", r"low(?:ly)? rated"], r"low\w*"),
    "average": _rating_patterns("3", ["mediocre", "ok", "okay", "decent", "middling"], "average"),
    "high": _rating_patterns("5", ["excellent", "top rated", "well rated", r"highly rated"], r"high\w*"),
}
_RATING_LEVEL = {"low": "low", "1 out of 5": "low", "average": "average", "3 out of 5": "average",
                 "high": "high", "5 out of 5": "high"}
_FAMILY = r"(?:famil\w*|kids?|child\w*)"
_FAMILY_NO = [r"(?:not|no|non|never|isn|aren|without)(?: \w+){0,3} " + _FAMILY, r"adults? only",
              _FAMILY + r" unfriendly"]
_VARIANTS = {
    ("eatType", "coffee shop"): ["coffee shop", "coffeeshop"],
    ("area", "city centre"): ["city centre", "city center", r"cent(?:re|er) of (?:the )?(?:city|town)",
                              r"town cent(?:re|er)", r"cent(?:re|er)", r"central\w*"],
    ("area", "riverside"): ["riverside", "river side", r"river\w*"],
    ("food", "fast food"): ["fast food", "fastfood"],
    ("food", "english"): ["english", "british"],
}


def slot_realized(slot: str, value: str, text: str) -> bool:
  """Whether `text` realizes slot=value under the rule of the module docstring.

  Args:
    slot: an official slot name (see `SLOTS`; aliases are accepted).
    value: the MR value, as written in the MR.
    text: the generated text (raw; it is normalized here).
  """
  slot = _SLOT_ALIASES.get(" ".join(slot.lower().split()), slot)
  norm_text, norm_value = normalize(text), normalize(value)
  if slot == "priceRange":
    level = _PRICE_LEVEL.get(norm_value)
    if level is None:
      raise ValueError(f"unknown priceRange value {value!r}; known: {sorted(_PRICE_LEVEL)}")
    return _any(_PRICE[level], norm_text)
  if slot == "customer rating":
    level = _RATING_LEVEL.get(norm_value)
    if level is None:
      raise ValueError(f"unknown customer rating value {value!r}; known: {sorted(_RATING_LEVEL)}")
    return _any(_RATING[level], norm_text)
  if slot == "familyFriendly":
    negated = _any(_FAMILY_NO, norm_text)
    if norm_value == "no":
      return negated
    if norm_value == "yes":
      return not negated and _any([_FAMILY], norm_text)
    raise ValueError(f"familyFriendly must be yes or no, got {value!r}")
  if slot not in SLOTS:
    raise ValueError(f"unknown slot {slot!r}; known: {SLOTS}")
  patterns = _VARIANTS.get((slot, norm_value), [re.escape(norm_value)])
  return _any(patterns, norm_text)


def missing_slots(mr: str | Mapping[str, str], text: str) -> list[str]:
  """The MR's slots whose values `text` does not realize (MR as a string or a parsed dict)."""
  slots = parse_mr(mr) if isinstance(mr, str) else dict(mr)
  return [slot for slot, value in slots.items() if not slot_realized(slot, value, text)]


def slot_error_rate(mr: str | Mapping[str, str], text: str) -> float:
  """Missing values / values of one example, in [0, 1]; NaN for an MR with no slot."""
  slots = parse_mr(mr) if isinstance(mr, str) else dict(mr)
  if not slots:
    return math.nan
  return len(missing_slots(slots, text)) / len(slots)


def corpus_slot_error(mrs: Sequence[str], texts: Sequence[str]) -> dict[str, object]:
  """Slot error over a corpus of (MR, output) pairs.

  Returns:
    {"slot_error_rate": total missing / total values (micro), "mean_example_rate": mean of per-example
     rates (macro, over MRs with a slot), "num_values": total values, "num_missing": total missing,
     "per_slot": {slot: missing / occurrences} for the slots that occur}.
  """
  if isinstance(texts, str) or len(mrs) != len(texts) or not texts:
    raise ValueError(f"need one text per MR and at least one pair; got {len(mrs)} MRs, {len(texts)} texts")
  total = missing = 0
  rates = []
  seen: dict[str, int] = {}
  missed: dict[str, int] = {}
  for mr, text in zip(mrs, texts):
    slots = parse_mr(mr)
    miss = missing_slots(slots, text)
    total += len(slots)
    missing += len(miss)
    if slots:
      rates.append(len(miss) / len(slots))
    for slot in slots:
      seen[slot] = seen.get(slot, 0) + 1
      missed[slot] = missed.get(slot, 0) + (slot in miss)
  return {"slot_error_rate": missing / total if total else math.nan,
          "mean_example_rate": sum(rates) / len(rates) if rates else math.nan,
          "num_values": total, "num_missing": missing,
          "per_slot": {slot: missed[slot] / seen[slot] for slot in SLOTS if slot in seen}}
