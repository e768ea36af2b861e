"""Fitting the RBR weights: a linear reward per response type over φ = [proposition probabilities,
class probabilities], from completions of the same prompt with a known ranking (DESIGN.md §6).

Loss: hinge over every same-prompt pair (better i, worse j) by the spec's ranks:
max(0, margin − (w·φ_i − w·φ_j)), with margin 1, a small L2 penalty, optimised full-batch with Adam
(lr 0.05). The paper ranks the ideal completion above every other one; here each class also ranks
above the worse ones (a cold refusal of a self-harm request above complying with it), without which
R_rm + w·φ preferred the unsafe one of the policy's own samples (docs/rbr.md, "Weights"). The error
rate is the fraction of ordered pairs where the worse completion scores at least as high as the
better one. Before fitting the reward is P(ideal class) alone, the spec's own judgement with no tuning.

As in the paper, the weights are fitted on top of the helpful-only reward model when its scores
are given (``Group.base``): the ranked quantity is R_rm + w·φ, so w learns to overrule the RM
where it prefers unsafe compliance (fitted for ``rbr.rbr_scale = 1``).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from omni.align.spec import Spec

Tensor = torch.Tensor


@dataclass
class Group:
    """All scored completions of one prompt: proposition probabilities [n, P], ranks [n] (0 = ideal) and
    optionally the reward model's scores [n] that the RBR term is added to."""

    response_type: str
    props: Tensor
    ranks: Tensor
    base: Tensor | None = None


def features(spec: Spec, props: Tensor, response_type: str) -> Tensor:
    """φ [N, P + C]: proposition probabilities then the type's class probabilities."""
    return torch.cat([props, spec.class_probabilities(props, response_type)], -1)


def feature_names(spec: Spec, response_type: str) -> list[str]:
    return list(spec.propositions) + [f"class:{c}" for c in spec.response_type(response_type).class_names]


def _pairs(groups: Sequence[Group], spec: Spec) -> tuple[Tensor, Tensor, Tensor]:
    """Features of (better, worse) same-prompt pairs [M, F] each and their base-score gap [M], for one response type."""
    better, worse, gap = [], [], []
    for g in groups:
        phi = features(spec, g.props, g.response_type)
        base = g.base if g.base is not None else torch.zeros(len(g.ranks))
        for i in range(len(g.ranks)):
            for j in range(len(g.ranks)):
                if g.ranks[i] < g.ranks[j]:
                    better.append(phi[i])
                    worse.append(phi[j])
                    gap.append(base[i] - base[j])
    if not better:
        raise ValueError("no ranked pairs: each prompt needs completions of at least two ranks")
    return torch.stack(better), torch.stack(worse), torch.stack(gap).float()


def initial_weights(spec: Spec, response_type: str) -> Tensor:
    """Untuned reward: P(ideal class), i.e. weight 1 on the rank-0 class probabilities."""
    rt = spec.response_type(response_type)
    w = torch.zeros(len(spec.propositions) + len(rt.classes))
    for i, c in enumerate(rt.classes):
        w[len(spec.propositions) + i] = float(c.rank == 0)
    return w


def error_rate(w: Tensor, groups: Sequence[Group], spec: Spec) -> float:
    """Fraction of (better, worse) pairs where the worse completion's reward >= the better one's."""
    better, worse, gap = _pairs(groups, spec)
    return float((gap + (better - worse) @ w <= 0).float().mean())


def fit_type(groups: Sequence[Group], spec: Spec, margin: float = 1.0, l2: float = 1e-3, steps: int = 500,
             lr: float = 0.05) -> Tensor:
    """Weights [P + C] for one response type, minimising the mean hinge loss over (better, worse) pairs."""
    better, worse, gap = _pairs(groups, spec)
    w = initial_weights(spec, groups[0].response_type).requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    for _ in range(steps):
        loss = torch.relu(margin - gap - (better - worse) @ w).mean() + l2 * w.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach()


def fit(groups: Sequence[Group], spec: Spec, val_fraction: float = 0.2, seed: int = 0, **kw) -> tuple["RBRWeights", dict]:
    """Fit per-type weights on a train split of prompts; report error rates before/after on both splits."""
    rng = random.Random(seed)
    report: dict = {"margin": kw.get("margin", 1.0), "optimiser": f"Adam lr {kw.get('lr', 0.05)}, "
                    f"{kw.get('steps', 500)} full-batch steps, L2 {kw.get('l2', 1e-3)}", "types": {}}
    weights = {}
    for t in sorted({g.response_type for g in groups}):
        gs = [g for g in groups if g.response_type == t]
        rng.shuffle(gs)
        n_val = max(1, int(len(gs) * val_fraction)) if len(gs) > 1 else 0
        val, train = gs[:n_val], gs[n_val:]
        w0 = initial_weights(spec, t)
        w = fit_type(train, spec, **kw)
        weights[t] = w
        rep = {"prompts_train": len(train), "prompts_val": len(val),
               "error_train_before": error_rate(w0, train, spec), "error_train_after": error_rate(w, train, spec)}
        if val:
            rep |= {"error_val_before": error_rate(w0, val, spec), "error_val_after": error_rate(w, val, spec)}
        report["types"][t] = rep
    return RBRWeights(spec, weights), report


class RBRWeights:
    """The fitted linear RBR: ``reward(props, types) = w_type · φ`` per completion."""

    def __init__(self, spec: Spec, weights: dict[str, Tensor]) -> None:
        self.spec, self.weights = spec, weights

    def reward(self, props: Tensor, response_types: Sequence[str]) -> Tensor:
        """props [N, P], one response type per row -> rewards [N]."""
        out = torch.zeros(len(response_types))
        for t in set(response_types):
            if t not in self.weights:
                raise ValueError(f"no fitted weights for response type {t!r}; fitted: {sorted(self.weights)}")
            idx = torch.tensor([i for i, r in enumerate(response_types) if r == t])
            out[idx] = features(self.spec, props[idx], t) @ self.weights[t]
        return out

    def save(self, path: str | Path, report: dict | None = None) -> None:
        data = {"spec": self.spec.source, "types": {t: dict(zip(feature_names(self.spec, t), w.tolist()))
                                                    for t, w in self.weights.items()}, "report": report or {}}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=1))

    @classmethod
    def load(cls, path: str | Path, spec: Spec) -> "RBRWeights":
        if not Path(path).exists():
            raise FileNotFoundError(f"no RBR weights at {path}; fit them with `python -m omni.align fit`")
        data = json.loads(Path(path).read_text())
        weights = {}
        for t, named in data["types"].items():
            names = feature_names(spec, t)
            if list(named) != names:
                raise ValueError(f"{path}: weights for {t!r} were fitted for features {list(named)}, but the spec "
                                 f"now gives {names}; refit with `python -m omni.align fit`")
            weights[t] = torch.tensor([named[n] for n in names])
        return cls(spec, weights)
