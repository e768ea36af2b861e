"""The omni model: the shared decoder + summed audio-codebook embeddings + the depth decoder.

Input of stream position s (see omni/conversation.py for the stream)::

    x_s = E(tokens[s]) + sum_k A_k(audio[s, k])        (A_k only where position s is an audio frame)

Outputs: ``decoder.logits(h)`` — the one head over the unified vocabulary (text, specials, image and
video codes; for audio frames it predicts the next text-stream token) — and, for audio frames,
the depth decoder's K codebook logits (omni/model/depth.py).

``with model.streaming(batch):`` covers the decoder's static KV cache (``model.max_seq_len``
positions) and the depth decoder's K-step cache in one block, like every other streaming module.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from omni.config import Config, ConfigError
from omni.conversation import OmniVocab
from omni.model.attention import AttentionMask
from omni.model.build import build_model
from omni.model.decoder import Decoder
from omni.model.depth import DepthDecoder
from omni.streaming import StreamingModule

Tensor = torch.Tensor


@dataclass
class OmniConfig:
    """The omni model and its frozen tokenizers (the `omni:` section of a config). The vocabulary
    layout (text, image, video and audio code counts) is not configured: it comes from the corpus
    as an :class:`OmniVocab`. Serving knobs live in the ``serving`` section (omni/config.py), loss
    weights in the omni task's ``omni_train`` section (omni/train/tasks/omni.py)."""

    # Frozen tokenizers: a folder written by Tokenizer.save, or the run folder of their training
    # (train.py --config configs/codec-tiny.yaml ...). data/build_omni.py resolves them.
    codec: str = "runs/codec-tiny"
    image_tokenizer: str = "runs/image-tiny"
    video_tokenizer: str = "runs/video-tiny"
    # Depth decoder (per-frame K-step transformer).
    depth_dim: int = 128
    depth_layers: int = 2
    depth_heads: int = 4
    depth_ffn_dim: int = 256

    def validate(self) -> None:
        if self.depth_dim % self.depth_heads:
            raise ConfigError(f"omni.depth_dim={self.depth_dim} must be divisible by omni.depth_heads={self.depth_heads}")


class OmniModel(StreamingModule):
    """Decoder over the unified vocabulary + audio embeddings + depth decoder.

    ``vocab`` (the corpus's layout) gives the K audio codebooks and their size; the decoder must
    already cover ``vocab.size`` ids (ValueError otherwise).
    """

    def __init__(self, decoder: Decoder, ocfg: OmniConfig, vocab: OmniVocab) -> None:
        super().__init__()
        if decoder.vocab_size < vocab.size:
            raise ValueError(f"the decoder has {decoder.vocab_size} ids but the vocabulary needs {vocab.size}: "
                             "build it with build_omni_model(cfg, vocab)")
        self.decoder = decoder
        self.n_codebooks, self.codebook_size = vocab.audio_codebooks, vocab.audio_codes
        dim = decoder.cfg.dim
        # K tables stored as one matrix (id = k * codebook_size + code): one gather for all codebooks.
        self.audio_embeddings = nn.Embedding(self.n_codebooks * self.codebook_size, dim)
        nn.init.normal_(self.audio_embeddings.weight, std=decoder.cfg.init_std)
        self.depth = DepthDecoder(dim, self.n_codebooks, self.codebook_size, ocfg.depth_dim, ocfg.depth_layers, ocfg.depth_heads,
                                  ocfg.depth_ffn_dim, decoder.cfg.attention, decoder.cfg.init_std)
        self.register_buffer("code_offsets", torch.arange(self.n_codebooks) * self.codebook_size, persistent=False)

    @property
    def max_seq_len(self) -> int:
        return self.decoder.cfg.max_seq_len

    def embed(self, tokens: Tensor, audio: Tensor) -> Tensor:
        """Input embeddings [B, S, dim] from tokens [B, S] and audio codes [B, S, K] (-1 = no frame)."""
        x = self.decoder.embed(tokens)
        frames = audio[..., 0] >= 0  # a frame carries all K codes
        if x.is_cuda or torch.compiler.is_compiling():  # static shapes: embed every position, zero where no frame
            a = self.audio_embeddings(audio.clamp(min=0) + self.code_offsets).sum(2)
            return x + a * frames[..., None].to(a.dtype)
        # CPU: gather only the frames (a fraction of the positions) — K embeddings each, summed.
        a = self.audio_embeddings(audio[frames] + self.code_offsets).sum(1)  # [N, dim]
        return x.index_put((frames,), a, accumulate=True)

    def forward(self, tokens: Tensor, audio: Tensor, positions: Optional[Tensor] = None,
                mask: Optional[AttentionMask] = None, frames: Optional[Tensor] = None,
                next_tokens: Optional[Tensor] = None, next_audio: Optional[Tensor] = None):
        """Final hidden states [B, S, dim] (streaming mode appends to the KV cache).

        Training (nanoGPT style, so one root forward covers every parameter under FSDP/ZeRO-3):
        with ``frames`` [B, S] bool (positions whose *next* position is a target audio frame),
        ``next_tokens`` [B, S] and ``next_audio`` [B, S, K], returns ``(logits [B, S, V],
        depth_logits [N, K, codebook_size])`` for the N selected frames (teacher-forced).
        """
        hidden = self.decoder(embeds=self.embed(tokens, audio), positions=positions, mask=mask, return_hidden=True)
        if frames is None:
            return hidden
        ctx = self.depth_context(hidden[frames], next_tokens[frames])
        return self.decoder.logits(hidden), self.depth(ctx, next_audio[frames])

    def depth_context(self, hidden: Tensor, next_tokens: Tensor) -> Tensor:
        """Depth-decoder context [N, dim] = hidden [N, dim] + E(text-stream token of the frame) [N]."""
        return hidden + self.decoder.embed(next_tokens)


def build_omni_model(cfg: Config, vocab: OmniVocab) -> OmniModel:
    """The decoder from ``build_model`` (random init or ``model.init_from`` pretrained weights, the
    vocabulary extended to ``vocab.size``) wrapped with the audio embeddings and depth decoder.
    ``cfg`` is not modified: ``model.vocab_size`` is ignored in favour of ``vocab.size``."""
    return OmniModel(build_model(cfg, vocab.size), cfg.section("omni"), vocab)
