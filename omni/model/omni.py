"""The omni model: the shared decoder + the codec's quantised latent as audio input + the depth decoder.

Input of stream position s (see omni/conversation.py for the stream)::

    x_s = E(tokens[s]) + W sum_k c_k[audio[s, k]]      (the audio term only where position s is an audio frame)

``c_k`` are the frozen codec's residual-VQ codewords (omni/nn/rvq.py), so the decoder reads the
latent the codec itself decodes from, through one learned projection ``W`` [dim, codec dim]. Codes
that sound alike then start as inputs that lie close together; a free embedding per code id (as in
Moshi) had to learn that from data, and on our few thousand utterances it memorised the speakers
instead of the words (docs/benchmarks.md, "make demo's answers").

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
    """Decoder over the unified vocabulary + audio input projection + depth decoder.

    ``vocab`` (the corpus's layout) gives the K audio codebooks and their size; the decoder must
    already cover ``vocab.size`` ids. ``codewords`` [K, codebook_size, codec dim] are the codewords
    of the codec the corpus was encoded with (``codec.quantizer.codebooks``); they are a frozen,
    unsaved buffer, given again at every build from the checkpoint's own codec. Raises ValueError
    when the decoder or the codewords do not fit ``vocab``.
    """

    # Weights of earlier versions that no longer load (omni.infer.load.load_weights quotes the advice).
    retired_weights = {"audio_embeddings.weight": "this checkpoint predates the codec-codeword audio input "
                       "(omni/model/omni.py): retrain it with train.py, or use the shipped omni-tiny"}

    def __init__(self, decoder: Decoder, ocfg: OmniConfig, vocab: OmniVocab, codewords: Tensor) -> None:
        super().__init__()
        if decoder.vocab_size < vocab.size:
            raise ValueError(f"the decoder has {decoder.vocab_size} ids but the vocabulary needs {vocab.size}: "
                             "build it with build_omni_model(cfg, vocab, codewords)")
        if codewords.dim() != 3 or tuple(codewords.shape[:2]) != (vocab.audio_codebooks, vocab.audio_codes):
            raise ValueError(f"codewords {list(codewords.shape)} do not fit the vocabulary's {vocab.audio_codebooks} "
                             f"codebooks of {vocab.audio_codes} codes: pass the quantizer.codebooks of the codec "
                             "the corpus was encoded with")
        self.decoder = decoder
        self.n_codebooks, self.codebook_size = vocab.audio_codebooks, vocab.audio_codes
        dim = decoder.cfg.dim
        # The K codebooks' codewords as one matrix (row = k * codebook_size + code): one gather for all levels.
        self.register_buffer("codewords", codewords.detach().float().reshape(-1, codewords.shape[-1]).clone(), persistent=False)
        self.audio_in = nn.Linear(codewords.shape[-1], dim, bias=False)
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
            a = self.audio_in(self.codewords[audio.clamp(min=0) + self.code_offsets].sum(2).to(x.dtype))
            return x + a * frames[..., None].to(a.dtype)
        # CPU: gather only the frames (a fraction of the positions) — K codewords each, summed.
        a = self.audio_in(self.codewords[audio[frames] + self.code_offsets].sum(1).to(x.dtype))  # [N, dim]
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


def build_omni_model(cfg: Config, vocab: OmniVocab, codewords: Tensor) -> OmniModel:
    """The decoder from ``build_model`` (random init or ``model.init_from`` pretrained weights, the
    vocabulary extended to ``vocab.size``) wrapped with the audio input (``codewords`` [K, codebook_size,
    codec dim], the codec's) and the depth decoder. ``cfg`` is not modified: ``model.vocab_size`` is
    ignored in favour of ``vocab.size``."""
    return OmniModel(build_model(cfg, vocab.size), cfg.section("omni"), vocab, codewords)
