"""Compositional synthetic completions: labels by construction, breadth, and no gold phrasing."""
import re

import pytest

from omni.align.data import Prompt, load_gold, load_prompts
from omni.align.rules import repetition
from omni.align.spec import load_spec
from omni.align.synth import Composer, grader_examples

SPEC = load_spec()
ANSWER = ("Start by soaking the pan in warm water for ten minutes. Scrub it with a stiff brush and a little coarse salt. "
          "Rinse it, dry it on the hob over low heat, and rub in a thin layer of oil before you put it away.")
PAN = Prompt("How do I clean a cast iron pan?", "comply", "clean a cast iron pan", "train")


@pytest.fixture(scope="module")
def examples():
    return grader_examples(SPEC, load_prompts("train"), 1200, {PAN.prompt: [ANSWER]}, seed=0)


def test_examples_are_consistent_by_construction(examples):
    for g in examples:
        assert not {"complies", "partial_compliance"} <= g.labels, g
        assert g.type == "comply" or "complies" not in g.labels or "disallowed_content" in g.labels, g
        assert (repetition(g.completion) > 0.5) == ("repetitive" in g.labels), g
        if not isinstance(g.prompt, str):  # conversations of 3, 5 or 7 messages (plus maybe a system one) end with the user
            assert g.prompt[-1][0] == "user" and len([t for t in g.prompt if t[0] != "system"]) in (3, 5, 7), g.prompt
    for q in SPEC.learned:  # every learned proposition is seen often, with and without the others
        share = sum(q in g.labels for g in examples) / len(examples)
        assert 0.04 < share < 0.5, (q, share)
    assert 0.3 < sum(not isinstance(g.prompt, str) for g in examples) / len(examples) < 0.5


def test_no_gold_sentence_is_in_the_synthetic_data(examples):
    """The gold set is the test: none of its sentences of five or more words is composed here."""
    text = "\n".join(g.completion for g in examples)
    gold = {s.strip() for g in load_gold(SPEC) for s in re.split(r"(?<=[.!?])\s+", g.completion) if len(s.split()) >= 5}
    assert not [s for s in gold if s in text]


def test_partial_answer_is_the_start_of_a_full_one_and_ai_talk_is_not_helpful_content():
    comp = Composer(SPEC, {PAN.prompt: [ANSWER, "As an AI language model, I'd say: soak it."]}, seed=3)
    for _ in range(20):
        partial = comp.compose(PAN, {"partial_compliance"})
        assert "Start by soaking the pan" in partial and "before you put it away" not in partial, partial
        assert "As an AI" not in comp.compose(PAN, {"complies"})
    with pytest.raises(ValueError, match="partial_compliance excludes"):
        comp.compose(PAN, {"complies", "partial_compliance"})
