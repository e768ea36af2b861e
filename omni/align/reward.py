"""Rewards for RL: the helpful-only reward model and the total RBR reward.

R = R_rm + rbr_scale · w·φ on safety-relevant prompts (response type hard_refuse / soft_refuse /
comply from the spec), R = R_rm alone on prompts the RBR does not cover (type None). ``rbr_scale`` is
one number, or one per response type (``python -m omni.align agreement`` measures which scale makes
the reward order a policy's own completions as the safety evaluation does).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch

# The `dev` extra's transformers: without it, RewardModel.from_transformers raises ImportError naming it.
try:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
except ImportError:
    AutoModelForSequenceClassification = AutoTokenizer = None

from omni.align.grader import Grader
from omni.align.models import encode_pair, load_head_model, pad_batch
from omni.align.weights import RBRWeights

Tensor = torch.Tensor


class RewardModel:
    """Scalar helpfulness reward for (prompt, completion) pairs: ours (backbone + scalar head, trained
    by ``train.py --task rbr-rm``) or any transformers sequence-classification RM (``hf:PATH``)."""

    def __init__(self, score_fn, batch_size: int = 16) -> None:
        self._score, self.batch_size = score_fn, batch_size

    @torch.no_grad()
    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        """[N] rewards."""
        out = [self._score(prompts[s: s + self.batch_size], completions[s: s + self.batch_size])
               for s in range(0, len(prompts), self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0)

    @classmethod
    def load(cls, path: str, batch_size: int = 16) -> "RewardModel":
        if path.startswith("hf:"):
            return cls.from_transformers(path.removeprefix("hf:"), batch_size)
        if not Path(path).exists():
            raise FileNotFoundError(f"no reward model at {path}; train one with "
                                    "`python train.py --config configs/rbr-rm-135m.yaml` or pass hf:PATH")
        model, tok, cfg = load_head_model(path, 1)
        r = cfg.section("rbr")
        dev = model.head.weight.device

        def score(prompts, completions):
            seqs = [encode_pair(tok, p, c, r.max_prompt_tokens, r.max_completion_tokens).ids for p, c in zip(prompts, completions)]
            tokens, lengths = pad_batch(seqs)
            return model(tokens.to(dev), lengths.to(dev)).squeeze(-1).float().cpu()

        return cls(score, batch_size)

    @classmethod
    def from_transformers(cls, path: str, batch_size: int = 16) -> "RewardModel":
        """Any ``AutoModelForSequenceClassification`` with one label; the chat template is used when present."""
        if AutoModelForSequenceClassification is None:
            raise ImportError(f"the reward model hf:{path} needs `pip install transformers`")
        model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        tok = AutoTokenizer.from_pretrained(path)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token

        def score(prompts, completions):
            if tok.chat_template:
                texts = [tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": c}],
                                                 tokenize=False) for p, c in zip(prompts, completions)]
            else:
                texts = [f"{p}\n\n{c}" for p, c in zip(prompts, completions)]
            enc = tok(texts, return_tensors="pt", padding=True, truncation=True)
            return model(**enc).logits[:, 0].float()

        return cls(score, batch_size)


class RBRReward:
    """Total reward with its parts. Empty completions are not graded (there is nothing to judge): their
    RBR part is ``empty_reward``."""

    def __init__(self, grader: Grader, weights: RBRWeights, rm: Optional[RewardModel] = None,
                 rbr_scale: float | Mapping[str, float] = 1.0, empty_reward: float = -1.0) -> None:
        if isinstance(rbr_scale, Mapping) and set(rbr_scale) - set(weights.weights):
            raise ValueError(f"rbr_scale names response types {sorted(set(rbr_scale) - set(weights.weights))} that the "
                             f"weights do not have; use some of {sorted(weights.weights)}")
        self.grader, self.weights, self.rm = grader, weights, rm
        self.rbr_scale, self.empty_reward = rbr_scale, empty_reward

    def scale(self, response_type: str) -> float:
        """The multiplier of w·φ for a response type (1 for a type a per-type ``rbr_scale`` leaves out)."""
        if isinstance(self.rbr_scale, Mapping):
            return float(self.rbr_scale.get(response_type, 1.0))
        return float(self.rbr_scale)

    def rbr(self, prompts: Sequence[str], completions: Sequence[str], types: Sequence[Optional[str]]) -> Tensor:
        """[N] w·φ; NaN where the prompt's type is None (not covered by the RBR)."""
        out = torch.full((len(prompts),), float("nan"))
        idx = [i for i, t in enumerate(types) if t is not None and completions[i].strip()]
        empty = [i for i, t in enumerate(types) if t is not None and not completions[i].strip()]
        if idx:
            props = self.grader.probabilities([prompts[i] for i in idx], [completions[i] for i in idx])
            out[idx] = self.weights.reward(props, [types[i] for i in idx])
        out[empty] = self.empty_reward
        return out

    def __call__(self, prompts: Sequence[str], completions: Sequence[str],
                 types: Sequence[Optional[str]]) -> dict[str, Tensor]:
        """{"total", "rm", "rbr"}: [N] each (rbr is NaN where not covered; total then equals rm)."""
        rbr = self.rbr(prompts, completions, types)
        rm = self.rm.score(prompts, completions) if self.rm is not None else torch.zeros(len(prompts))
        scale = torch.tensor([0.0 if t is None else self.scale(t) for t in types])
        total = rm + scale * torch.nan_to_num(rbr, nan=0.0)
        return {"total": total, "rm": rm, "rbr": rbr}
