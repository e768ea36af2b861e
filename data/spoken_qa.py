"""The demo's spoken questions and answers, read from ``data/spoken_qa.jsonl`` (installed as
``omni.data.spoken_qa``).

Each line is ``{"question": ..., "answer": ...}``: short, distinct, factual pairs whose answers a
listener can check ("What color is the sky?" -> "The sky is blue."). The omni corpus
(data/build_omni.py) trains on them, spoken in training voices and answered in the preset voice;
the demo asks them in unseen voices (data/voices.py).
"""
from __future__ import annotations

import json
from pathlib import Path

SPOKEN_QA_FILE = Path(__file__).with_name("spoken_qa.jsonl")


def load_spoken_qa(path: str | Path = SPOKEN_QA_FILE) -> list[tuple[str, str]]:
    """(question, answer) pairs of ``path``, in file order. Raises ValueError naming the line of a
    malformed, empty or repeated entry."""
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            q, a = item["question"].strip(), item["answer"].strip()
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as e:
            raise ValueError(f"{path}:{n}: expected {{\"question\": str, \"answer\": str}} ({e})") from e
        if not q or not a:
            raise ValueError(f"{path}:{n}: empty question or answer")
        if q.lower() in seen:
            raise ValueError(f"{path}:{n}: question {q!r} is repeated")
        seen.add(q.lower())
        pairs.append((q, a))
    if not pairs:
        raise ValueError(f"{path} holds no questions")
    return pairs
