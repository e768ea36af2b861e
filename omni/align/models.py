"""Backbone + head models shared by the trained grader and the reward model, and their inputs.

A (prompt, completion) pair is encoded as a plain transcript, one line per turn (``User: ...``,
``Assistant: ...``, ``System: ...``) ending with ``Assistant: {completion}``. A prompt is one user
message or a whole conversation (:data:`PromptLike`). What does not fit the window is dropped and
counted (:class:`Encoded`): the conversation's earliest turns first, the middle of a long
completion (its head and its last quarter stay, so a harmful or looping ending is still read). The
grader and reward model may also keep only the bottom ``rbr.backbone_layers`` blocks of the
pretrained decoder — judging a completion needs fewer layers than writing one, and every layer
dropped is compute saved in training and in every PPO step.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import torch
from torch import nn

from omni.config import Config
from omni.infer.load import load_weights, read_checkpoint
from omni.model.build import build_model
from omni.model.decoder import Decoder
from omni.tokenizers.base import TextTokenizer
from omni.tokenizers.text import build_text_tokenizer

Tensor = torch.Tensor


Turns = tuple[tuple[str, str], ...]  # ((role, content), ...): a conversation, hashable (cache keys)
# A user message, or a conversation ending with the user's turn: [{"role", "content"}, ...] (TRL,
# transformers chat format) or ((role, content), ...).
PromptLike = Union[str, Sequence[Mapping[str, Any]], Turns]
ROLES = {"user": "User", "assistant": "Assistant", "system": "System"}


def as_turns(prompt: PromptLike) -> Turns:
    """Normalise a prompt to ((role, content), ...). Raises ValueError on an unknown role or shape."""
    if isinstance(prompt, str):
        return (("user", prompt),)
    out = []
    for m in prompt:
        role, content = (m["role"], m["content"]) if isinstance(m, Mapping) else m
        if role not in ROLES or not isinstance(content, str):
            raise ValueError(f"a prompt turn needs a role in {sorted(ROLES)} and text content, got {m!r}")
        out.append((role, content))
    if not out:
        raise ValueError("a conversation prompt needs at least one turn")
    return tuple(out)


def last_user_message(prompt: PromptLike) -> str:
    """The text of the conversation's last user turn (what the response type is decided by)."""
    return next((c for r, c in reversed(as_turns(prompt)) if r == "user"), "")


def render_transcript(prompt: PromptLike) -> str:
    """The prompt as transcript lines ``User: ...`` / ``Assistant: ...`` / ``System: ...``."""
    return "\n".join(f"{ROLES[r]}: {c}" for r, c in as_turns(prompt))


@dataclass(frozen=True)
class Encoded:
    """Token ids of a (prompt, completion) pair and how many tokens of each the window left out."""

    ids: list[int]
    prompt_dropped: int = 0
    completion_dropped: int = 0

    @property
    def truncated(self) -> bool:
        return self.prompt_dropped > 0 or self.completion_dropped > 0


def encode_pair(tok: TextTokenizer, prompt: PromptLike, completion: str, max_prompt: int, max_completion: int) -> Encoded:
    """Token ids of the transcript ``User: ...\n[Assistant: ...\nUser: ...\n]Assistant: {completion}``.

    The prompt keeps its last turns whole while they fit ``max_prompt`` tokens (the earliest kept
    turn may lose its start); a completion over ``max_completion`` tokens keeps its first three
    quarters and its last quarter of the window. Dropped token counts are returned, never hidden.
    """
    turns = as_turns(prompt)
    parts = [tok.encode(f"{ROLES[r]}: {c}\n") for r, c in turns[:-1]] + [tok.encode(f"{ROLES[turns[-1][0]]}: {turns[-1][1]}\nAssistant:")]
    kept: list[int] = []
    for ids in reversed(parts):
        room = max_prompt - len(kept)
        kept = (ids if len(ids) <= room else ids[len(ids) - room:] if room > 0 else []) + kept
    p_dropped = sum(map(len, parts)) - len(kept)
    c = tok.encode(" " + completion)
    c_dropped = max(0, len(c) - max_completion)
    if c_dropped:
        tail = max_completion // 4
        c = c[: max_completion - tail] + (c[len(c) - tail:] if tail else [])
    return Encoded(kept + c, p_dropped, c_dropped)


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Right-pad id lists: tokens [B, S] long and lengths [B] long. Causal attention keeps padding
    from touching real positions, so no mask is needed for what the heads read."""
    if any(len(s) == 0 for s in seqs):
        raise ValueError("cannot pad an empty sequence")
    lengths = torch.tensor([len(s) for s in seqs])
    tokens = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = torch.as_tensor(list(s))
    return tokens, lengths


def freeze_below(decoder: Decoder, train_layers: int) -> None:
    """Train only the top ``train_layers`` blocks (and then the final norm); -1 = everything, 0 =
    nothing of the decoder (a head alone). Frozen layers see inputs that need no grad, so autograd
    records nothing for them."""
    if train_layers < 0:
        return
    decoder.requires_grad_(False)
    if train_layers > 0:
        decoder.norm.requires_grad_(True)
        for layer in decoder.layers[-train_layers:]:
            layer.requires_grad_(True)


class HeadModel(nn.Module):
    """Decoder backbone + linear head on [mean-pooled; last] hidden states.

    ``forward(tokens [B, S], lengths [B]) -> [B, n_out]`` (logits per proposition for the grader, one
    scalar reward for the reward model).
    """

    def __init__(self, backbone: Decoder, n_out: int, train_layers: int = -1) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(2 * backbone.cfg.dim, n_out)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        freeze_below(backbone, train_layers)

    @property
    def activation_checkpointing(self) -> bool:
        return self.backbone.activation_checkpointing

    @activation_checkpointing.setter
    def activation_checkpointing(self, value: bool) -> None:
        self.backbone.activation_checkpointing = value

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        h = self.backbone(tokens, return_hidden=True)  # [B, S, D]
        valid = (torch.arange(tokens.shape[1], device=tokens.device)[None] < lengths[:, None]).unsqueeze(-1)
        mean = (h * valid).sum(1) / lengths[:, None].to(h.dtype)
        last = h[torch.arange(h.shape[0], device=h.device), lengths - 1]
        return self.head(torch.cat([mean, last], -1).float())


def build_head_model(cfg: Config, n_out: int, pretrained: bool = True) -> HeadModel:
    """A HeadModel on ``cfg.model`` (pretrained init as configured, or random shape-only when
    ``pretrained`` is False, e.g. before loading a checkpoint)."""
    if not pretrained:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init_from=""))
    r = cfg.section("rbr")
    backbone = build_model(cfg)
    if 0 < r.backbone_layers < len(backbone.layers):
        backbone.layers = backbone.layers[: r.backbone_layers]
        backbone.cfg.n_layers = r.backbone_layers
    return HeadModel(backbone, n_out, r.train_layers)


def load_head_model(checkpoint: str | Path, n_out: int) -> tuple[HeadModel, TextTokenizer, Config]:
    """A trained grader / reward model from a run or step folder written by train.py."""
    cfg, state, step = read_checkpoint(checkpoint)
    if state["head.weight"].shape[0] != n_out:
        raise ValueError(f"{checkpoint}: head has {state['head.weight'].shape[0]} outputs, expected {n_out} "
                         "(a grader trained with a different spec, or a reward model given as grader?)")
    model = load_weights(build_head_model(cfg, n_out, pretrained=False), state, step)
    return model, build_text_tokenizer(cfg.tokenizer), cfg
