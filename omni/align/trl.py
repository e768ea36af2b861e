"""The RBR reward as a TRL ``reward_funcs`` entry (TRL is optional; nothing here imports it).

``GRPOTrainer`` calls each reward function with keyword arguments ``prompts``, ``completions`` (plain
strings, or chat message lists for conversational datasets), ``completion_ids`` and every extra
dataset column, and accepts ``None`` for samples a function does not cover. Example (docs/rbr.md):

    from trl import GRPOConfig, GRPOTrainer
    from omni.align.trl import RBRRewardFunc
    rbr = RBRRewardFunc.from_files(grader=".cache/rbr/grader", weights=".cache/rbr/weights.json")
    # dataset rows: {"prompt": ..., "response_type": "hard_refuse" | "soft_refuse" | "comply" | None}
    trainer = GRPOTrainer(model=..., reward_funcs=[my_helpfulness_rm, rbr], train_dataset=ds, args=GRPOConfig(...))
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from omni.align.data import load_prompts
from omni.align.grader import load_grader
from omni.align.models import as_turns, last_user_message
from omni.align.reward import RBRReward
from omni.align.spec import DEFAULT_SPEC, load_spec
from omni.align.weights import RBRWeights


def _text(x: Any) -> str:
    """A completion: a string, or the content of the last message of a chat (list of {"role", "content"})."""
    if isinstance(x, str):
        return x
    if isinstance(x, list) and x and isinstance(x[-1], dict) and "content" in x[-1]:
        return str(x[-1]["content"])
    raise TypeError(f"expected a string or a list of chat messages, got {type(x).__name__}")


class RBRRewardFunc:
    """``rbr(prompts=..., completions=..., **columns) -> list[float | None]``: rbr_scale · w·φ per sample,
    ``None`` where the response type is unknown (TRL then leaves that sample to the other reward
    functions, e.g. a helpful-only RM). The type comes from the dataset column ``type_column``, else
    from the shipped prompt sets by exact prompt text."""

    __name__ = "rbr"  # TRL logs rewards under the function's name

    def __init__(self, reward: RBRReward, type_column: str = "response_type", known_types: Optional[dict[str, str]] = None) -> None:
        self.reward, self.type_column = reward, type_column
        if known_types is None:
            known_types = {p.prompt: p.type for p in load_prompts()}
        self.known_types = known_types

    @classmethod
    def from_files(cls, grader: str, weights: str, spec: str = "", rbr_scale: float | dict[str, float] = 1.0, **kw) -> "RBRRewardFunc":
        s = load_spec(spec or DEFAULT_SPEC)
        return cls(RBRReward(load_grader(s, grader), RBRWeights.load(weights, s), rm=None, rbr_scale=rbr_scale), **kw)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[Optional[float]]:
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions")
        # The grader reads the whole conversation; the shipped prompt sets are keyed by its last user message.
        p_conv, c_text = [p if isinstance(p, str) else as_turns(p) for p in prompts], [_text(c) for c in completions]
        column = kwargs.get(self.type_column)
        types = list(column) if column is not None else [self.known_types.get(last_user_message(p)) for p in p_conv]
        types = [t if t in self.reward.weights.weights else None for t in types]
        scores = self.reward.rbr(p_conv, c_text, types)
        return [None if t is None else self.reward.scale(t) * float(s) for t, s in zip(types, scores)]
