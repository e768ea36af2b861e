"""Autoregressive generation over the static KV cache (gpt-fast style, in little code)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from omni.model.decoder import Decoder

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
    """Pick one token per row from logits [batch, vocab]; returns [batch] long."""
    if cfg.temperature == 0.0:
        return logits.argmax(-1)
    logits = logits.float() / cfg.temperature
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


@torch.no_grad()
def generate(
    model: Decoder,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    sampling: SamplingConfig = SamplingConfig(),
    stop_ids: Sequence[int] = (),
    generator: Optional[torch.Generator] = None,
) -> list[list[int]]:
    """Generate continuations for a batch of token-id prompts (lengths may differ).

    The common prefix length is prefilled in one call; rows with longer prompts are then fed their
    remaining prompt tokens while the others already sample, so no padding ever enters the cache.
    Returns the new tokens of each row (without the prompt), cut after the first stop id.
    """
    sampling.validate()
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    device = model.tok_embeddings.weight.device
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    max_len = int(lengths.max()) + max_new_tokens
    if max_len > model.cfg.max_seq_len:
        raise ValueError(
            f"prompt ({int(lengths.max())} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model context "
            f"({model.cfg.max_seq_len}); shorten the prompt or ask for fewer tokens"
        )
    batch = len(prompts)
    padded = torch.zeros(batch, int(lengths.max()), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        padded[i, : len(p)] = torch.as_tensor(list(p), dtype=torch.long)
    model.check_tokens(padded)
    stop = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
    common = int(lengths.min())
    out = torch.zeros(batch, max_new_tokens, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    was_training = model.training
    model.eval()
    try:
        with model.streaming(batch, max_len=max_len):
            # Prefill: only the last position needs vocabulary logits.
            logits = model.logits(model(padded[:, :common], return_hidden=True)[:, -1])
            pos = common  # absolute position of the token about to be chosen
            n_out = torch.zeros(batch, dtype=torch.long, device=device)
            while True:
                nxt = sample(logits, sampling, generator)
                in_prompt = lengths > pos
                nxt = torch.where(in_prompt, padded[:, min(pos, padded.shape[1] - 1)], nxt)
                emitting = ~in_prompt & ~done & (n_out < max_new_tokens)
                out[emitting, n_out[emitting]] = nxt[emitting]
                n_out += emitting.long()
                if stop.numel():
                    done |= emitting & torch.isin(nxt, stop)
                done |= n_out >= max_new_tokens
                if bool(done.all()):
                    break
                logits = model(nxt[:, None])[:, -1]
                pos += 1
    finally:
        model.train(was_training)
    results = []
    for i in range(batch):
        row = out[i, : int(n_out[i])].tolist()
        for j, t in enumerate(row):
            if t in stop_ids:
                row = row[: j + 1]
                break
        results.append(row)
    return results
