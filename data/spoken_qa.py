"""Spoken questions and their ideal answers, read from JSONL files (installed as ``omni.data.spoken_qa``).

Each line is ``{"question": ..., "answer": ..., "behaviour": ..., "split": ...}``; ``behaviour``
(default ``qa``) and ``split`` (``train`` or ``test``, default ``train``) may be left out. Two files
ship:

* ``data/spoken_qa.jsonl`` (:data:`SPOKEN_QA_FILE`): the demo's short, distinct, factual pairs whose
  answers a listener can check ("What color is the sky?" -> "The sky is blue."), all ``qa``;
* ``data/speech_safety.jsonl`` (:data:`SAFETY_FILE`): the behaviours GPT-4o's system card measures
  for a speech model (:data:`BEHAVIOURS`): refusing to identify a speaker from a voice sample while
  answering who said a famous line; refusing ungrounded inferences about a speaker (intelligence,
  trustworthiness, wealth, religion...); hedging on sensitive traits ("It may sound like {accent},
  but..."; ``{accent}`` is filled with the sample voice's accent, :func:`omni.data.voices.accent_of`);
  and spoken versions of the RBR prompt set's ``train`` prompts (omni/align/prompts) with their ideal
  replies. Its ``test`` rows are held out of every corpus: eval/system_card.py asks them (and the RBR
  ``test`` prompts) in unseen voices.

The omni corpus (data/build_omni.py) trains on the ``train`` rows, spoken in training voices and
answered in the preset voice; behaviours marked ``sample`` are asked right after a voice sample
(another speaker saying a neutral line).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

SPOKEN_QA_FILE = Path(__file__).with_name("spoken_qa.jsonl")
SAFETY_FILE = Path(__file__).with_name("speech_safety.jsonl")
SPLITS = ("train", "test")


class Behaviour(NamedTuple):
    """What a reply to a question of this behaviour should do (``answer``, ``refuse`` or ``hedge``),
    and whether the question is asked over a voice sample."""

    ideal: str
    sample: bool


BEHAVIOURS: dict[str, Behaviour] = {
    "qa": Behaviour("answer", False),
    "speaker_id": Behaviour("refuse", True),        # "who is speaking?" over a voice sample
    "famous_line": Behaviour("answer", False),      # "who said <famous line>?"
    "ungrounded": Behaviour("refuse", True),        # "how intelligent is this speaker?"
    "sensitive_trait": Behaviour("hedge", True),    # "what accent does this speaker have?"
    "hard_refuse": Behaviour("refuse", False),      # the RBR prompt set's response types
    "soft_refuse": Behaviour("refuse", False),
    "comply": Behaviour("answer", False),
}
# Neutral lines the voice sample says before a question about its speaker.
SAMPLE_LINES = ("The meeting starts at nine tomorrow morning.", "I left my umbrella on the train again.",
                "We should plant more trees along this road.", "The library closes early on Sundays.",
                "Please pass me the salt and the pepper.", "My brother is learning to play the piano.")


@dataclass(frozen=True)
class SpokenQA:
    question: str
    answer: str
    behaviour: str = "qa"
    split: str = "train"

    @property
    def sample(self) -> bool:
        """Asked over a voice sample."""
        return BEHAVIOURS[self.behaviour].sample


def load_spoken_qa(path: str | Path = SPOKEN_QA_FILE, split: Optional[str] = None) -> list[SpokenQA]:
    """The entries of ``path`` (of ``split`` only, if given), in file order. Raises ValueError naming
    the line of a malformed, empty or repeated entry, or an unknown behaviour or split."""
    items: list[SpokenQA] = []
    seen: set[str] = set()
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            item = SpokenQA(row["question"].strip(), row["answer"].strip(), row.get("behaviour", "qa"), row.get("split", "train"))
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as e:
            raise ValueError(f"{path}:{n}: expected {{\"question\": str, \"answer\": str[, \"behaviour\", \"split\"]}} ({e})") from e
        if not item.question or not item.answer:
            raise ValueError(f"{path}:{n}: empty question or answer")
        if item.behaviour not in BEHAVIOURS:
            raise ValueError(f"{path}:{n}: unknown behaviour {item.behaviour!r}; known: {sorted(BEHAVIOURS)}")
        if item.split not in SPLITS:
            raise ValueError(f"{path}:{n}: split must be one of {SPLITS}, got {item.split!r}")
        if item.question.lower() in seen:
            raise ValueError(f"{path}:{n}: question {item.question!r} is repeated")
        seen.add(item.question.lower())
        items.append(item)
    if not items:
        raise ValueError(f"{path} holds no questions")
    return [x for x in items if split is None or x.split == split]
