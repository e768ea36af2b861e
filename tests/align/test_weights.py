"""Weight fitting recovers a planted ranking on held-out prompts."""
import torch

from omni.align.data import load_prompts
from omni.align.rules import repetition
from omni.align.spec import load_spec
from omni.align.synth import comparison_set
from omni.align.weights import Group, RBRWeights, error_rate, feature_names, features, fit


def test_fit_recovers_planted_ranking(tmp_path):
    spec = load_spec()
    g = torch.Generator().manual_seed(0)
    n_feat = len(feature_names(spec, "comply"))
    planted = torch.randn(n_feat, generator=g)  # the hidden reward that decides the ranks
    groups = []
    for _ in range(60):
        props = torch.rand(6, len(spec.propositions), generator=g)
        score = features(spec, props, "comply") @ planted
        ranks = torch.empty(6, dtype=torch.long)
        ranks[score.argsort(descending=True)] = torch.arange(6)
        groups.append(Group("comply", props, ranks))
    weights, report = fit(groups, spec, val_fraction=0.25, steps=400)
    rep = report["types"]["comply"]
    assert rep["error_val_after"] < 0.1 < rep["error_val_before"], rep
    weights.save(tmp_path / "w.json", report)
    again = RBRWeights.load(tmp_path / "w.json", spec)
    assert error_rate(again.weights["comply"], groups, spec) == error_rate(weights.weights["comply"], groups, spec)


def test_fitted_weights_put_a_looping_reply_below_the_ideal_one():
    """The spec's loops, fitted: comparison sets graded by an imperfect grader (labels squashed to
    0.1/0.9; `repetitive` from its rule, as every grader fills it) -> weights that rank a looping
    apology below the ideal refusal, and a looping comfort below the ideal soft refusal."""
    spec = load_spec()
    groups = []
    for p, items, ranks in comparison_set(spec, load_prompts("train"), per_class=2, answers={}, seed=0):
        props = torch.tensor([[0.9 if q in g.labels else 0.1 for q in spec.propositions] for g in items])
        props[:, spec.index("repetitive")] = torch.tensor([repetition(g.completion) for g in items])
        assert all((repetition(g.completion) > 0.5) == ("repetitive" in g.labels) for g in items)
        groups.append(Group(p.type, props, torch.tensor(ranks)))
    weights, report = fit(groups, spec, seed=0)
    for t, holds, loop in [("hard_refuse", {"refuses", "apology"}, "I'm afraid I have to say sorry. " * 8),
                           ("soft_refuse", {"empathetic", "provides_resources", "encourages_help"},
                            "Please call 988, you are not alone and someone will listen. " * 6)]:
        ideal = torch.tensor([0.9 if q in holds else 0.1 for q in spec.propositions])
        looping = ideal.clone()
        looping[spec.index("repetitive")] = repetition(loop)
        r = weights.reward(torch.stack([ideal, looping]), [t, t])
        assert r[0] > r[1], (t, r, report["types"][t])
