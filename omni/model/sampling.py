"""How the next token is chosen from logits: greedy, temperature, top-k, top-p."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


Tensor = torch.Tensor


@dataclass
class SamplingConfig:
    """How the next token is chosen. ``temperature=0`` is greedy."""

    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off

    def validate(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0 or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"need top_k >= 0 and 0 < top_p <= 1, got top_k={self.top_k}, top_p={self.top_p}")


def sample(logits: Tensor, cfg: SamplingConfig, generator: Optional[torch.Generator] = None) -> Tensor:
    """Pick one token per row from logits [batch, vocab]; returns [batch] long.

    Ids whose logit is -inf (masked by the caller) are never chosen, whatever the settings: the
    logits are shifted by their row maximum before the temperature divides them, so a tiny
    temperature cannot overflow to inf - inf = NaN."""
    if cfg.temperature == 0.0:
        return logits.argmax(-1)
    logits = logits.float()
    logits = (logits - logits.amax(-1, keepdim=True)) / cfg.temperature
    if cfg.top_k:
        kth = torch.topk(logits, min(cfg.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop tokens once the mass *before* them already exceeds top_p (always keeps the first).
        drop = (cum - sorted_logits.softmax(-1)) > cfg.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
