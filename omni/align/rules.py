"""Rule-based propositions: properties of a completion that a fixed function judges better than a
learned grader (DESIGN.md §6). The spec names them under ``rules:`` (proposition -> rule name here);
every grader fills those columns from the rule, so they need no training data and cannot be gamed by
phrasing the grader has not seen.

* ``repetition`` — looping or degenerate text: the share of the completion's word 8-grams that
  repeat an earlier 8-gram, mapped to [0, 1]. Eight words (punctuation counts as a word) span a
  looping sentence but not the shared frame of a templated list ("Step 2: add the sugar and stir
  it in."), which shorter n-grams mistook for a loop. A PPO policy that learned "I'm afraid I have to say
  sorry. I'm afraid I have to say sorry. …" scores ~1; prose and numbered steps score ~0 (measured
  on the gold set, docs/rbr.md).
"""
from __future__ import annotations

import re
from typing import Callable

_WORD = re.compile(r"\w+|[^\w\s]")


def repeated_ngram_share(text: str, n: int = 8) -> float:
    """Share of the word n-grams of ``text`` (lower-cased words and punctuation marks) that already
    occurred earlier in it; 0.0 for texts shorter than ``n + 1`` words."""
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i: i + n]) for i in range(len(words) - n + 1)]
    if len(grams) < 2:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def repetition(text: str, low: float = 0.1, high: float = 0.3) -> float:
    """P(the completion loops): 0 below ``low`` repeated 8-gram share, 1 above ``high``, linear between.

    The ramp's ends were read off the gold set: its 392 hand-labelled non-looping completions (up to
    ~200 words, lists and code included) all score 0.0; its looping ones start at 0.27 (a long
    answer whose last sentence repeats) and a sentence said five times reaches ~0.6."""
    return min(1.0, max(0.0, (repeated_ngram_share(text) - low) / (high - low)))


RULES: dict[str, Callable[[str], float]] = {"repetition": repetition}
