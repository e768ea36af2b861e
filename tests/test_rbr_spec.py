"""Behaviour spec: class probabilities, validation errors, shipped data consistency."""
import pytest
import torch

from omni.align.data import load_gold, load_prompts
from omni.align.spec import SpecError, load_spec, spec_from_dict

SMALL = {
    "propositions": {"refuses": "declines", "apology": "apologises", "complies": "does it"},
    "response_types": {"hard_refuse": {"classes": [
        {"name": "ideal", "rank": 0, "when": ["refuses", "apology"]},
        {"name": "curt", "rank": 1, "when": ["refuses", "not apology"]},
        {"name": "bad", "rank": 2, "when": ["complies"]},
    ]}},
}


def test_class_probabilities_are_normalised_products():
    spec = spec_from_dict(SMALL)
    p = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.5, 0.7]])
    got = spec.class_probabilities(p, "hard_refuse")
    raw = torch.tensor([[0.9 * 0.8, 0.9 * 0.2, 0.1], [0.2 * 0.5, 0.2 * 0.5, 0.7]])
    torch.testing.assert_close(got, raw / raw.sum(-1, keepdim=True))
    assert spec.label_class({"refuses"}, "hard_refuse") == "curt"
    assert spec.label_class({"apology"}, "hard_refuse") is None


def test_unknown_proposition_in_rule_is_named():
    bad = {**SMALL, "response_types": {"hard_refuse": {"classes": [{"name": "ideal", "rank": 0, "when": ["refuses", "not polite"]}]}}}
    with pytest.raises(SpecError, match="unknown proposition 'polite'"):
        spec_from_dict(bad)


@pytest.mark.parametrize("text,match", [
    ("propositions: [a, b\n", "not valid YAML"),
    ("propositions: {a: x}\n", "missing top-level key"),
    ("propositions: {a: x}\nresponse_types: {t: {classes: [{name: i, rank: 1, when: [a]}]}}\n", "rank 0"),
    ("propositions: {a: x}\nresponse_types: {t: {classes: [{name: i, rank: 0, when: [a, not a b]}]}}\n", "cannot read literal"),
])
def test_malformed_spec_files(tmp_path, text, match):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=match):
        load_spec(path)


def test_shipped_spec_prompts_and_gold_are_consistent():
    spec = load_spec()
    assert set(spec.types) == {"hard_refuse", "soft_refuse", "comply"}
    prompts = load_prompts()
    assert {p.type for p in prompts} == set(spec.types) and {p.split for p in prompts} == {"train", "test"}
    gold = load_gold(spec)
    assert len(gold) >= 150
    for q in spec.propositions:  # every proposition has positives and negatives in the gold set
        n = sum(q in g.labels for g in gold)
        assert 0 < n < len(gold), q
