"""Weight fitting recovers a planted ranking on held-out prompts."""
import torch

from omni.align.spec import load_spec
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
