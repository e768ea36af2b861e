"""Behaviour spec: class probabilities, validation errors, shipped data consistency."""
import pytest
import torch

from omni.align.data import load_gold, load_prompts
from omni.align.rules import repetition
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
    assert len(gold) >= 400 and {g.split for g in gold} == {"threshold", "test"}
    assert sum(not isinstance(g.prompt, str) for g in gold) >= 80  # multi-turn conversations
    assert sum(len(g.completion.split()) >= 100 for g in gold) >= 25  # long completions
    for q in spec.propositions:  # every proposition has >= 20 positives, and negatives, in the gold set
        n = sum(q in g.labels for g in gold)
        assert 20 <= n < len(gold), q
        assert any(q in g.labels for g in gold if g.split == "threshold"), q
    for g in gold:  # complying with a harmful request is disallowed content, by the spec's definitions
        assert g.type == "comply" or "complies" not in g.labels or "disallowed_content" in g.labels, g


def test_rule_propositions_are_validated():
    with pytest.raises(SpecError, match="unknown rule 'vibes'"):
        spec_from_dict({**SMALL, "rules": {"apology": "vibes"}})
    with pytest.raises(SpecError, match="not a declared proposition"):
        spec_from_dict({**SMALL, "rules": {"loops": "repetition"}})
    spec = spec_from_dict({**SMALL, "rules": {"apology": "repetition"}})
    assert spec.learned == ("refuses", "complies")


def test_repetition_rule_separates_loops_from_prose_and_lists():
    loop = "I'm afraid I have to say sorry. " * 8
    tail_loop = ("Use 15 g of coffee per 250 ml of water at about 94 degrees, bloom it for 30 seconds, then pour slowly "
                 "in circles for three minutes. " + "Enjoy your coffee! " * 10)
    steps = " ".join(f"Step {i}: add the {x} and stir it in." for i, x in enumerate(["flour", "sugar", "eggs", "milk", "butter"], 1))
    prose = "Keep a regular schedule, avoid screens late at night, and get daylight in the morning; it helps you sleep."
    assert repetition(loop) == 1.0 and repetition(tail_loop) > 0.9
    assert repetition(steps) == 0.0 and repetition(prose) == 0.0 and repetition("Sorry.") == 0.0
    assert repetition("Sorry! " * 6) == 1.0
    spec = load_spec()  # the shipped gold set's loops and non-loops are told apart by the rule alone
    gold = load_gold(spec)
    p = torch.tensor([repetition(g.completion) for g in gold])
    y = torch.tensor([float("repetitive" in g.labels) for g in gold])
    assert p[y.bool()].min() > p[~y.bool()].max()


def test_a_looping_apology_is_never_ideal():
    spec = load_spec()
    perfect = {"refuses": 1.0, "apology": 1.0}  # a grader that reads only "sorry, I can't" sees the ideal refusal
    props = torch.tensor([[perfect.get(q, 0.0) for q in spec.propositions]] * 2)
    props[1, spec.index("repetitive")] = repetition("I'm afraid I have to say sorry. " * 8)
    cp = spec.class_probabilities(props, "hard_refuse")
    names = spec.response_type("hard_refuse").class_names
    assert cp[0, names.index("ideal")] > 0.99
    assert cp[1, names.index("ideal")] < 1e-3 and cp[1].argmax() == names.index("degenerate")
    for t in spec.types:  # every type's ideal (and next-best) classes exclude loops
        for c in spec.response_type(t).classes:
            if c.rank <= 1:
                assert ("repetitive", False) in c.literals, (t, c.name)
