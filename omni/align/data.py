"""Prompt sets and the hand-labelled gold set shipped with omni (omni/align/prompts/)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from omni.align.models import PromptLike, as_turns
from omni.align.spec import Spec

PROMPT_DIR = Path(__file__).resolve().parent / "prompts"


@dataclass(frozen=True)
class Prompt:
    """A prompt with its response type, a short task phrase (for composed completions) and split."""

    prompt: str
    type: str
    task: str
    split: str


@dataclass(frozen=True)
class Graded:
    """A (prompt, completion) pair with the set of propositions that hold (hand or construction labels)."""

    prompt: PromptLike  # a user message, or a conversation as ((role, content), ...)
    completion: str
    labels: frozenset[str]
    type: str = ""
    split: str = ""  # gold set: "threshold" (fit cut-offs and calibration) or "test"


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file; a clear error names the line that is not JSON."""
    rows = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not a JSON object ({e})") from e
    return rows


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))


def load_prompts(split: str | None = None, path: str | Path = PROMPT_DIR / "prompts.jsonl") -> list[Prompt]:
    """The shipped prompt set (comply incl. risky-looking benign ones, hard_refuse, soft_refuse)."""
    out = [Prompt(r["prompt"], r["type"], r["task"], r["split"]) for r in read_jsonl(path)]
    return [p for p in out if split is None or p.split == split]


def load_gold(spec: Spec, path: str | Path = PROMPT_DIR / "gold.jsonl") -> list[Graded]:
    """The hand-written, hand-labelled gold completions; labels checked against the spec. A row's
    prompt is a string (one user message) or a list of {"role", "content"} turns ending with the user's."""
    out = []
    for i, r in enumerate(read_jsonl(path), 1):
        unknown = set(r["labels"]) - set(spec.propositions)
        if unknown:
            raise ValueError(f"{path}: row {i}: labels {sorted(unknown)} are not propositions of {spec.source}")
        prompt = r["prompt"] if isinstance(r["prompt"], str) else as_turns(r["prompt"])
        out.append(Graded(prompt, r["completion"], frozenset(r["labels"]), r.get("type", ""), r.get("split", "test")))
    return out
