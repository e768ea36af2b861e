"""One generation step of the omni model, shared by offline chat and the streaming speech session.

Per row, a small state machine says what may come next (text, an audio frame, image codes):

    TEXT      any text token, <|end_of_turn|>, <|audio_start|> (-> AUDIO), <|image_start|> (-> IMAGE)
    AUDIO     a text-stream token: a text token or <|text_pad|> = one more audio frame (its K codes
              come from the depth decoder), or <|audio_end|> (-> TEXT)
    IMAGE     exactly h*w image codes, then <|image_end|> is forced (-> TEXT)
    DONE      after <|end_of_turn|>

Allowed ids are precomputed boolean masks, so a step costs one masked sample plus the depth
decoder's K steps for frames. The RNG order is fixed (text-stream token, then codebooks 0..K-1),
so a seeded offline generation and a seeded streaming session draw the same tokens.

:class:`Decoding` is a :class:`~omni.streaming.StreamingModule` that owns the model (as Moshi's
``LMGen`` owns its ``LMModel``): ``with decoding.streaming(B):`` enters the model's KV cache, the
depth decoder's cache and the per-row modes at once, and ``reset_streaming(rows)`` resets them
together. ``compile=True`` runs the one-position steps of the decoder and of the depth decoder
through omni/infer/compile.py.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from omni.conversation import OmniVocab
from omni.infer.compile import decode_step
from omni.model.sampling import SamplingConfig, sample
from omni.model.omni import OmniModel
from omni.streaming import StreamingModule, StreamingState

Tensor = torch.Tensor

TEXT, AUDIO, IMAGE, IMAGE_END, DONE = range(5)


class _Modes(StreamingState):
    """Per-row mode (TEXT, AUDIO, ...) and count of image codes / audio frames so far, [B] long."""

    def __init__(self, batch: int, device: torch.device) -> None:
        self.mode = torch.full((batch,), TEXT, dtype=torch.long, device=device)
        self.count = torch.zeros(batch, dtype=torch.long, device=device)

    def reset(self, mask: Optional[Tensor] = None) -> None:
        rows = slice(None) if mask is None else mask.to(self.mode.device)
        self.mode[rows] = TEXT
        self.count[rows] = 0


class Decoding(StreamingModule):
    """Per-row modality state and the sampler of the next stream position."""

    def __init__(self, model: OmniModel, vocab: OmniVocab, sampling: SamplingConfig = SamplingConfig(),
                 audio_sampling: Optional[SamplingConfig] = None, generator: Optional[torch.Generator] = None,
                 min_frames: int = 0, compile: bool = False) -> None:
        """``min_frames``: forbid <|audio_end|> before a spoken reply has this many frames (benchmarks
        use it to time replies of a fixed length with untrained weights). ``compile``: the fast path
        (omni/infer/compile.py) for one-position steps."""
        super().__init__()
        sampling.validate()
        self.min_frames = min_frames
        self.model, self.vocab = model, vocab
        self.sampling, self.audio_sampling = sampling, audio_sampling or sampling
        self.generator = generator
        sp = vocab.specials
        device = model.decoder.tok_embeddings.weight.device
        V = model.decoder.vocab_size
        allowed = torch.zeros(5, V, dtype=torch.bool)
        control = [sp[n] for n in ("<|bos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|text_pad|>",
                                   "<|audio_end|>", "<|image_end|>", "<|video_start|>", "<|video_end|>",
                                   "<|frame|>", "<|interrupt|>")]
        allowed[TEXT, : vocab.text_size] = True
        allowed[TEXT, control] = False
        allowed[TEXT, [sp["<|end_of_turn|>"], sp["<|eos|>"]]] = True
        allowed[AUDIO] = allowed[TEXT]
        allowed[AUDIO, [sp[n] for n in ("<|end_of_turn|>", "<|eos|>", "<|audio_start|>", "<|image_start|>")]] = False
        allowed[AUDIO, [sp["<|text_pad|>"], sp["<|audio_end|>"]]] = True
        allowed[IMAGE, vocab.image_offset : vocab.image_offset + vocab.image_codes] = True
        allowed[IMAGE_END, sp["<|image_end|>"]] = True
        allowed[DONE, sp["<|pad|>"]] = True
        self.register_buffer("allowed", allowed.to(device), persistent=False)
        self.image_len = vocab.image_grid[0] * vocab.image_grid[1]
        self.ids = {n: sp[n] for n in ("<|audio_start|>", "<|audio_end|>", "<|image_start|>", "<|end_of_turn|>", "<|eos|>")}
        self.step = decode_step(model, compile)
        self.depth_step = decode_step(model.depth.transformer, compile)

    def _init_streaming_state(self, batch_size: int, **_: Any) -> _Modes:
        return _Modes(batch_size, self.allowed.device)

    @property
    def mode(self) -> Tensor:
        """[B] long: each row's mode (TEXT, AUDIO, IMAGE, IMAGE_END, DONE)."""
        return self.require_streaming_state("use it inside `with decoding.streaming(batch):`").mode

    def start(self, rows: Tensor, mode: int) -> None:
        """Put ``rows`` [B] bool into ``mode`` (AUDIO after a forced <|audio_start|>, TEXT otherwise)."""
        st: _Modes = self._streaming_state
        st.mode[rows] = mode
        st.count[rows] = 0

    @torch.no_grad()
    def feed(self, tokens: Tensor, codes: Tensor) -> Tensor:
        """Append one position per row (tokens [B], codes [B, K], -1 = no frame) to the KV cache; the
        new last hidden state [B, dim]."""
        return self.step(tokens[:, None], codes[:, None])[:, -1]

    @torch.no_grad()
    def choose(self, hidden: Tensor, active: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Sample the next position of each row from the last hidden state.

        Args:
            hidden: [B, dim] the decoder's final hidden state at each row's last position
            active: [B] bool, rows whose state advances (default all)
        Returns:
            tokens [B] long, codes [B, K] long (-1 where the position is not an audio frame)
        """
        m = self.model
        logits = m.decoder.logits(hidden).float()
        mode, count = self.mode, self._streaming_state.count
        allowed = self.allowed[mode]
        if self.min_frames:
            early = (mode == AUDIO) & (count < self.min_frames)
            allowed[:, self.ids["<|audio_end|>"]] &= ~early
        logits = logits.masked_fill(~allowed, float("-inf"))
        tok = sample(logits, self.sampling, self.generator)
        frame = (mode == AUDIO) & (tok != self.ids["<|audio_end|>"])
        if active is not None:
            frame &= active
        codes = torch.full((tok.shape[0], m.n_codebooks), -1, dtype=torch.long, device=tok.device)
        if bool(frame.any()):
            ctx = m.depth_context(hidden, tok)
            drawn = m.depth.generate(ctx, lambda lg: sample(lg.float(), self.audio_sampling, self.generator),
                                     step=self.depth_step)
            codes = torch.where(frame[:, None], drawn, codes)
        self._advance(tok, active)
        return tok, codes

    def _advance(self, tok: Tensor, active: Optional[Tensor]) -> None:
        st: _Modes = self._streaming_state
        s, ids = st.mode, self.ids
        new = s.clone()
        new[(s == TEXT) & (tok == ids["<|audio_start|>"])] = AUDIO
        new[(s == TEXT) & (tok == ids["<|image_start|>"])] = IMAGE
        new[(s == AUDIO) & (tok == ids["<|audio_end|>"])] = TEXT
        in_image = s == IMAGE
        counting = in_image | ((s == AUDIO) & (tok != ids["<|audio_end|>"]))
        count = torch.where(counting, st.count + 1, torch.zeros_like(st.count))
        new[in_image & (count >= self.image_len)] = IMAGE_END
        new[s == IMAGE_END] = TEXT
        new[(s == TEXT) & ((tok == ids["<|end_of_turn|>"]) | (tok == ids["<|eos|>"]))] = DONE
        if active is not None:
            new = torch.where(active, new, s)
            count = torch.where(active, count, st.count)
        st.mode, st.count = new, count

    @property
    def done(self) -> Tensor:
        """[B] bool: rows that ended their turn."""
        return self.mode == DONE
