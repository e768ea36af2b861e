"""Backbone + head models shared by the trained grader and the reward model, and their inputs.

A (prompt, completion) pair is encoded as plain ``User: ...\nAssistant: ...`` text (last
``max_prompt`` prompt tokens, first ``max_completion`` completion tokens): no system prompt, so the
sequences stay short on CPU. The grader and reward model may also keep only the bottom
``rbr.backbone_layers`` blocks of the pretrained decoder — judging a completion needs fewer layers
than writing one, and every layer dropped is compute saved in training and in every PPO step.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from omni.config import Config
from omni.infer.load import load_weights, read_checkpoint
from omni.model.build import build_model
from omni.model.decoder import Decoder
from omni.tokenizers.base import TextTokenizer
from omni.tokenizers.text import build_text_tokenizer

Tensor = torch.Tensor


def encode_pair(tok: TextTokenizer, prompt: str, completion: str, max_prompt: int, max_completion: int) -> list[int]:
    """Token ids of ``User: {prompt}\nAssistant: {completion}``, prompt and completion truncated."""
    return tok.encode(f"User: {prompt}\nAssistant:")[-max_prompt:] + tok.encode(" " + completion)[:max_completion]


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
