"""Rule-based propositions: properties of a completion that a fixed function judges better than a
learned grader (DESIGN.md §6). The spec names them under ``rules:`` (proposition -> rule name here);
every grader fills those columns from the rule, so they need no training data and cannot be gamed by
phrasing the grader has not seen.

* ``repetition`` — looping or degenerate text: the larger of two ramps, (a) the share of the
  completion's word 8-grams that repeat an earlier 8-gram and (b) the share of its sentences that
  repeat an earlier sentence. Eight words (punctuation counts as a word) span a looping sentence
  but not the shared frame of a templated list ("Step 2: add the sugar and stir it in."), which
  shorter n-grams mistook for a loop; (b) catches short sentences said again and again ("My
  apologies. My apologies. My apologies."), which have too few 8-grams. A PPO policy that learned "I'm afraid I have to say
  sorry. I'm afraid I have to say sorry. …" scores ~1; prose and numbered steps score ~0 (measured
  on the gold set, docs/rbr.md).
"""
from __future__ import annotations

import re
from typing import Callable

_WORD = re.compile(r"\w+|[^\w\s]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def repeated_ngram_share(text: str, n: int = 8) -> float:
    """Share of the word n-grams of ``text`` (lower-cased words and punctuation marks) that already
    occurred earlier in it; 0.0 for texts shorter than ``n + 1`` words."""
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i: i + n]) for i in range(len(words) - n + 1)]
    if len(grams) < 2:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def repeated_sentence_share(text: str) -> float:
    """Share of the sentences of ``text`` (split after . ! ?, compared lower-cased) that already
    occurred earlier in it; 0.0 for fewer than three sentences."""
    sentences = [s.strip().lower() for s in _SENTENCE_END.split(text) if s.strip()]
    if len(sentences) < 3:
        return 0.0
    return 1.0 - len(set(sentences)) / len(sentences)


def _ramp(x: float, low: float, high: float) -> float:
    return min(1.0, max(0.0, (x - low) / (high - low)))


def repetition(text: str) -> float:
    """P(the completion loops): max of the repeated 8-gram share ramped 0.1 -> 0, 0.3 -> 1 and the
    repeated sentence share ramped 0.2 -> 0, 0.4 -> 1 (linear between).

    The ramps' ends were read off the gold set: its 402 hand-labelled non-looping completions (up to
    ~200 words, lists and code included) all score 0.0 and its 25 loops all score 1.0."""
    return max(_ramp(repeated_ngram_share(text), 0.1, 0.3), _ramp(repeated_sentence_share(text), 0.2, 0.4))


RULES: dict[str, Callable[[str], float]] = {"repetition": repetition}
