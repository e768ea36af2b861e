"""The ``omni`` task: train the omni model end to end on a mixed-modality corpus, tokenizers frozen.

The corpus is a folder of tar shards (format ``omni-shards-v1``, omni/train/shards.py, docs/data.md),
written by data/build_omni.py: one shard per split for the demo corpus (``--config``), as many as it
takes for corpora on disk (``--source ... --shards``). :class:`~omni.train.shards.ShardStream`
streams it as packed rows of ``seq_len + 1`` positions: document ids so attention never crosses
conversations, positions restarting per conversation. Loss: cross-entropy of the unified head on
target positions (``<|text_pad|>`` targets weighted ``omni_train.text_pad_weight``) +
``omni_train.audio_loss_weight`` x the depth decoder's codebook cross-entropy on target audio frames.
Logged per modality: loss_text, loss_monologue (text-stream tokens of spoken answers), loss_audio
(codebooks), loss_image (generated image codes). Each term is a mean over the targets of the whole
optimiser step (every micro-batch, every rank): rows with many targets (a spoken answer) weigh more
than rows with few (a short transcript), whatever the split.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from omni.config import Config, ConfigError
from omni.conversation import MOD_AUDIO, MOD_IMAGE, MOD_TEXT, OmniVocab, Stream
from omni.model.attention import AttentionMask
from omni.model.omni import build_omni_model
import omni.tokenizers  # noqa: F401  (registers codec, image_tok, video_tok: an omni config holds them)
from omni.tokenizers.base import load_tokenizer
from omni.tokenizers.text import build_text_tokenizer
from omni.train.shards import ShardStream, read_shard_index
from omni.train.task import Task, register_task
from omni.train.tasks.lm import lm_flops_per_token

Tensor = torch.Tensor
FIELDS = ("tokens", "audio", "span", "loss", "modality")


@dataclass
class OmniTrainConfig:
    """How the omni task weighs its loss (the ``omni_train:`` section): part of one training run, not
    of the model, so a checkpoint loads without it and ``--resume`` may change it."""

    # Audio codebook cross-entropy relative to the text cross-entropy.
    audio_loss_weight: float = 1.0
    # <|text_pad|> targets (most frames of a spoken answer carry one) are down-weighted as in Moshi
    # (Défossez et al. 2024), so the real monologue tokens dominate the text loss.
    text_pad_weight: float = 0.5

    def validate(self) -> None:
        for name in ("audio_loss_weight", "text_pad_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"omni_train.{name} must be >= 0, got {getattr(self, name)}")


def batch_from_streams(streams: list[Stream], pad_id: int) -> dict[str, Tensor]:
    """One conversation per row, right-padded to the longest ([B, S+1] fields like the packed rows of
    :class:`~omni.train.shards.ShardStream`); the padding is a document of its own and never a target.
    For fine-tuning on a few conversations (and the tests) without building a corpus."""
    S = max(len(s) for s in streams)
    K = streams[0].audio.shape[1]
    B = len(streams)
    batch = {"tokens": torch.full((B, S), pad_id), "audio": torch.full((B, S, K), -1),
             "span": torch.zeros(B, S, dtype=torch.long), "loss": torch.zeros(B, S, dtype=torch.bool),
             "modality": torch.zeros(B, S, dtype=torch.long), "document_ids": torch.ones(B, S, dtype=torch.long),
             "positions": torch.zeros(B, S, dtype=torch.long)}
    for b, s in enumerate(streams):
        n = len(s)
        for f in FIELDS:
            batch[f][b, :n] = getattr(s, f)
        batch["document_ids"][b, :n] = 0
        batch["positions"][b, :n] = torch.arange(n)
        batch["positions"][b, n:] = torch.arange(S - n)
    return batch


def _target_masks(batch: dict[str, Tensor], text_pad_id: int, text_pad_weight: float) -> dict[str, Tensor]:
    """Target masks of packed rows ([B, S]): what each loss term averages over."""
    tok, doc, t_mod = batch["tokens"], batch["document_ids"], batch["modality"][:, 1:]
    valid = batch["loss"][:, 1:] & (doc[:, 1:] == doc[:, :-1])
    frames = valid & (t_mod == MOD_AUDIO)
    return {"weight": valid.float() * torch.where(tok[:, 1:] == text_pad_id, text_pad_weight, 1.0),
            "text": valid & (t_mod == MOD_TEXT), "monologue": frames, "image": valid & (t_mod == MOD_IMAGE),
            "frames": frames}


def omni_targets(batch: dict[str, Tensor], text_pad_id: int, text_pad_weight: float = 0.5) -> dict[str, float]:
    """Targets per loss term of a batch: ``weight`` (text-head targets, ``<|text_pad|>`` counted at its
    weight), ``text`` / ``monologue`` / ``image`` (text-head targets by modality) and ``audio``
    (codebook targets: frames x K)."""
    m = _target_masks(batch, text_pad_id, text_pad_weight)
    out = {k: float(m[k].sum()) for k in ("weight", "text", "monologue", "image")}
    out["audio"] = float(m["frames"].sum()) * batch["audio"].shape[-1]
    return out


def omni_loss(model: nn.Module, batch: dict[str, Tensor], text_pad_id: int, text_pad_weight: float = 0.5,
              audio_weight: float = 1.0, totals: Optional[dict[str, float]] = None) -> tuple[Tensor, dict[str, float]]:
    """Loss of packed rows (fields of :class:`~omni.train.shards.ShardStream` batches, each [B, S+1]; audio [B, S+1, K]).

    Every term is a sum over this batch's targets divided by ``totals`` (:func:`omni_targets`
    summed over an optimiser step's micro-batches and ranks); without ``totals``, by this batch's
    own counts, i.e. per-target means of the batch. Metrics (``loss_text``, ``loss_monologue``,
    ``loss_image``, ``loss_audio``, ``audio_acc``) are normalised the same way, so they add up too."""
    tok, audio, doc = batch["tokens"], batch["audio"], batch["document_ids"]
    target, t_audio = tok[:, 1:], audio[:, 1:]
    m = _target_masks(batch, text_pad_id, text_pad_weight)
    totals = totals or omni_targets(batch, text_pad_id, text_pad_weight)
    per = {k: max(float(totals.get(k, 0.0)), 1.0) for k in ("weight", "text", "monologue", "image", "audio")}
    frames = m["frames"]
    mask = AttentionMask(document_ids=doc[:, :-1], span_ids=batch["span"][:, :-1])
    logits, depth_logits = model(tok[:, :-1], audio[:, :-1], positions=batch["positions"][:, :-1], mask=mask,
                                 frames=frames, next_tokens=target, next_audio=t_audio)
    ce = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), reduction="none").view_as(target)
    text_loss = (ce * m["weight"]).sum() / per["weight"]
    metrics = {f"loss_{k}": float(ce.detach()[m[k]].sum()) / per[k] for k in ("text", "monologue", "image")}
    codes = t_audio[frames]  # [N, K]
    # With no frame in this batch the sum is a zero that still touches the depth decoder's output.
    audio_ce = F.cross_entropy(depth_logits.float().flatten(0, 1), codes.flatten(), reduction="sum")
    audio_loss = audio_ce / per["audio"] if codes.numel() else depth_logits.sum() * 0.0
    metrics["audio_acc"] = float((depth_logits.detach().argmax(-1) == codes).sum()) / per["audio"]
    metrics["loss_audio"] = float(audio_loss.detach())
    return text_loss + audio_weight * audio_loss, metrics


@register_task("omni")
class OmniTask(Task):
    """The omni model on a corpus from data/build_omni.py; the tokenizers that made it stay frozen."""

    def _index(self, cfg: Config) -> dict[str, Any]:
        return read_shard_index(cfg.data.path)

    def build_model(self, cfg: Config) -> nn.Module:
        """Decoder (random or pretrained) + audio input + depth decoder. The vocabulary layout comes
        from the corpus's OmniVocab, the audio codewords from the codec saved with the corpus (the
        config is not written to: model.vocab_size is ignored)."""
        index = self._index(cfg)
        vocab = OmniVocab.from_dict(index["vocab"])
        if cfg.data.seq_len > cfg.model.max_seq_len:
            raise ValueError(f"data.seq_len={cfg.data.seq_len} exceeds model.max_seq_len={cfg.model.max_seq_len}")
        return build_omni_model(cfg, vocab, load_tokenizer(index["tokenizers"]["codec"]).quantizer.codebooks)

    def build_dataset(self, cfg: Config, split: str = "train") -> torch.utils.data.Dataset:
        """Packed rows streamed from the corpus's shards (the Trainer sets ranks and workers)."""
        d = cfg.data
        ds = ShardStream(d.path, split, d.seq_len, cfg.train.batch_size, seed=cfg.train.seed, buffer=d.shuffle_buffer)
        self._text_pad, self._weights = ds.vocab.specials["<|text_pad|>"], cfg.section("omni_train")
        return ds

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        return omni_loss(model, batch, self._text_pad, self._weights.text_pad_weight, self._weights.audio_loss_weight)

    def targets(self, batch: dict[str, Tensor]) -> dict[str, float]:
        return omni_targets(batch, self._text_pad, self._weights.text_pad_weight)

    def step_loss(self, model: nn.Module, batch: dict[str, Tensor], totals: dict[str, float],
                  phase: Optional[str] = None) -> tuple[Tensor, dict[str, float]]:
        return omni_loss(model, batch, self._text_pad, self._weights.text_pad_weight, self._weights.audio_loss_weight, totals)

    def tokens_in(self, batch: dict[str, Tensor]) -> int:
        return batch["tokens"].shape[0] * (batch["tokens"].shape[1] - 1)

    def flops_per_token(self, model: nn.Module, cfg: Config) -> float:
        return lm_flops_per_token(model.decoder, cfg)

    def on_save(self, model: nn.Module, cfg: Config, folder: str) -> None:
        """Make the checkpoint self-contained: vocabulary layout and the four frozen tokenizers."""
        index = self._index(cfg)
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        (out / "vocab.json").write_text(json.dumps(index["vocab"], indent=1))
        build_text_tokenizer(cfg.tokenizer).save(out / "tokenizers" / "text")
        for name, src in index["tokenizers"].items():
            shutil.copytree(src, out / "tokenizers" / name, dirs_exist_ok=True)
