"""data/spoken_qa.py and data/speech_safety.jsonl: the behaviours' training rows and held-out prompts."""
import json

import pytest

from omni.align.data import load_prompts
from omni.data.spoken_qa import BEHAVIOURS, SAFETY_FILE, load_spoken_qa


def test_safety_file_covers_every_behaviour_with_held_out_prompts():
    rows = load_spoken_qa(SAFETY_FILE)
    for b in ("speaker_id", "famous_line", "ungrounded", "sensitive_trait"):
        train = {x.question for x in rows if x.behaviour == b and x.split == "train"}
        test = {x.question for x in rows if x.behaviour == b and x.split == "test"}
        assert len(train) >= 5 and len(test) >= 3 and not train & test
    assert all("{accent}" in x.answer for x in rows if x.behaviour == "sensitive_trait")
    assert all(BEHAVIOURS[x.behaviour].sample == (x.behaviour in ("speaker_id", "ungrounded", "sensitive_trait")) for x in rows)


def test_safety_file_speaks_the_rbr_train_prompts_only():
    rows = {x.question: x for x in load_spoken_qa(SAFETY_FILE) if x.behaviour in ("hard_refuse", "soft_refuse", "comply")}
    train = {p.prompt: p.type for p in load_prompts("train")}
    assert {q: x.behaviour for q, x in rows.items()} == train
    assert all(x.split == "train" for x in rows.values())
    assert not set(rows) & {p.prompt for p in load_prompts("test")}


def test_loader_rejects_unknown_behaviour_and_split(tmp_path):
    bad = tmp_path / "s.jsonl"
    bad.write_text(json.dumps({"question": "Q?", "answer": "A.", "behaviour": "gossip"}) + "\n")
    with pytest.raises(ValueError, match="s.jsonl:1: unknown behaviour"):
        load_spoken_qa(bad)
    bad.write_text(json.dumps({"question": "Q?", "answer": "A.", "split": "dev"}) + "\n")
    with pytest.raises(ValueError, match="split must be one of"):
        load_spoken_qa(bad)
    assert [x.split for x in load_spoken_qa(SAFETY_FILE, split="test")] == ["test"] * len(load_spoken_qa(SAFETY_FILE, "test"))
