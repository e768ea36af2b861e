"""The total reward R = R_rm + rbr_scale · w·φ, with one scale or one per response type."""
import pytest
import torch

import omni.align.config  # noqa: F401  (registers the rbr section)
from omni.align.reward import RBRReward, RewardModel
from omni.align.spec import load_spec
from omni.align.weights import RBRWeights, initial_weights
from omni.config import ConfigError, config_from_dict

SPEC = load_spec()


class FixedGrader:
    """Stands in for a grader: the same proposition probabilities for every completion."""

    def __init__(self, value: float) -> None:
        self.props = torch.full((1, len(SPEC.propositions)), value)

    def probabilities(self, prompts, completions, progress=False):
        return self.props.expand(len(prompts), -1).clone()


def test_rbr_scale_per_response_type():
    weights = RBRWeights(SPEC, {t: initial_weights(SPEC, t) for t in SPEC.types})
    rm = RewardModel(lambda p, c: torch.ones(len(p)))
    args = (["a", "b", "c", "d"], ["x"] * 4, ["hard_refuse", "soft_refuse", "comply", None])
    one = RBRReward(FixedGrader(0.7), weights, rm)(*args)
    rbr = one["rbr"]
    assert torch.isnan(rbr[3]) and torch.allclose(one["total"][:3], 1 + rbr[:3]) and one["total"][3] == 1
    assert rbr[:3].abs().min() > 0  # so that the scales below show
    per = RBRReward(FixedGrader(0.7), weights, rm, {"hard_refuse": 3.0, "comply": 0.0})(*args)
    assert torch.allclose(per["total"], torch.stack([1 + 3 * rbr[0], 1 + rbr[1], torch.tensor(1.0), torch.tensor(1.0)]))
    with pytest.raises(ValueError, match="response types"):
        RBRReward(FixedGrader(0.7), weights, rm, {"harmful": 2.0})


def test_rbr_scale_in_the_config():
    base = {"model": {}, "rbr": {}}
    assert config_from_dict(base | {"rbr": {"rbr_scale": 0}}).section("rbr").rbr_scale == 0.0
    cfg = config_from_dict(base | {"rbr": {"rbr_scale": {"hard_refuse": 2, "soft_refuse": 2.5}}})
    assert cfg.section("rbr").rbr_scale == {"hard_refuse": 2, "soft_refuse": 2.5}
    for bad in (-1, {"hard_refuse": "a lot"}):
        with pytest.raises(ConfigError, match="rbr_scale"):
            config_from_dict(base | {"rbr": {"rbr_scale": bad}})
