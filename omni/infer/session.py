"""Streaming speech-to-speech: B concurrent spoken conversations, in lock-step ticks of one frame.

Each :meth:`SpeechSession.tick` takes one codec frame of input audio per row (``hop`` samples,
80 ms at 12.5 Hz) and returns one frame of output audio per row:

* the frame is encoded by the codec in streaming mode; a row that is listening prefills it into
  the decoder's KV cache at once, so when the turn ends only one decoder step stands between the
  last input sample and the first output frame;
* a user turn opens on speech (VAD; without one, on any non-silent frame, keeping
  ``PREROLL_FRAMES`` frames before it) and ends by VAD (speech heard, then ``end_of_turn_ms`` of silence) or by an explicit
  ``end_turn`` flag; the row then prefills ``<|audio_end|><|end_of_turn|><|assistant|><|audio_start|>``
  and samples its first frame in the same tick;
* a responding row generates one frame per tick (text-stream token + K codes from the depth
  decoder), decodes it with the streaming codec and returns it immediately;
* barge-in: speech from the user for ``barge_in_ms`` while a row responds (or an explicit
  ``interrupt`` flag) ends the reply with ``<|interrupt|>`` after the frames the user heard — all
  those returned, less the ``unplayed`` ones a client reports still in its playback buffer, which are
  cut from the history and the KV cache (``Decoder.set_streaming_offset``) — and opens a user turn
  with the frames that interrupted it.

Rows advance independently inside one batched decoder call: each row feeds its own number of
positions; shorter rows are padded and their cache offset is set back with
``Decoder.set_streaming_offset`` (padding lands beyond the offset, where it is never visible and
is overwritten later). Every position fed is logged per row, so :meth:`history` is exactly what the
KV cache holds.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence, Union

import torch

from omni.conversation import ConversationFormat, Message, Stream
from omni.infer.decoding import AUDIO, DONE, Decoding
from omni.infer.vad import VoiceActivity
from omni.model.sampling import SamplingConfig
from omni.model.omni import OmniConfig, OmniModel
from omni.streaming import StreamingModule
from omni.tokenizers.codec import SpeechCodec

Tensor = torch.Tensor

IDLE, LISTEN, RESPOND = range(3)
PREROLL_FRAMES = 2  # frames kept from before VAD speech onset, so the first syllable is not cut
SILENCE_PEAK = 1e-3  # without a VAD, input frames whose peak stays below this are silence


@dataclass
class TickOutput:
    """audio [B, 1, hop] (zeros where a row is not speaking); speaking [B] bool; codes [B, K] of the
    frame each speaking row produced (-1 elsewhere); events (row, name) with names user_start,
    turn_end, reply_end, barge_in."""

    audio: Tensor
    speaking: Tensor
    codes: Tensor
    events: list[tuple[int, str]] = field(default_factory=list)


class SpeechSession:
    """B concurrent speech-to-speech conversations over one model, codec and KV cache.

    Use as a context manager (it enters the model's, codec's and VAD's streaming state)::

        with SpeechSession(model, codec, fmt, batch_size=2, vad=VoiceActivity(16000)) as s:
            for chunk in mic:                       # [B, 1, n] float at codec.sample_rate
                for out in s.feed(chunk):           # one TickOutput per completed frame
                    play(out.audio)
    """

    def __init__(self, model: OmniModel, codec: SpeechCodec, fmt: ConversationFormat, batch_size: int = 1, *,
                 vad: Optional[VoiceActivity] = None, system: Sequence[Message] = (),
                 sampling: SamplingConfig = SamplingConfig(), audio_sampling: Optional[SamplingConfig] = None,
                 generator: Optional[torch.Generator] = None, ocfg: OmniConfig = OmniConfig(),
                 min_reply_frames: int = 0) -> None:
        if codec.cfg.num_codebooks != model.n_codebooks or codec.cfg.codebook_size != model.codebook_size:
            raise ValueError(f"codec has {codec.cfg.num_codebooks}x{codec.cfg.codebook_size} codes, the model "
                             f"expects {model.n_codebooks}x{model.codebook_size}: use the codec the model was trained with")
        self.model, self.codec, self.fmt, self.vad, self.B = model, codec, fmt, vad, batch_size
        self.system = list(system)
        self.sampling, self.audio_sampling, self.generator = sampling, audio_sampling, generator
        self.min_reply_frames = min_reply_frames
        self.hop = codec.hop_length
        frame_ms = 1000.0 / codec.frame_rate
        self.end_frames = max(1, round(ocfg.end_of_turn_ms / frame_ms))
        self.barge_frames = max(1, round(ocfg.barge_in_ms / frame_ms))
        self.max_reply_frames, self.threshold = ocfg.max_reply_frames, ocfg.vad_threshold
        self.device = model.decoder.tok_embeddings.weight.device
        self.sp = fmt.sp
        self._stack: Optional[contextlib.ExitStack] = None

    # ---- lifetime -------------------------------------------------------------------------------
    def __enter__(self) -> "SpeechSession":
        self._stack = contextlib.ExitStack()
        self.model.eval()
        self._stack.enter_context(torch.no_grad())
        for m in (self.model, self.codec, self.vad):
            if m is not None:
                self._stack.enter_context(m.streaming(self.B))
        B = self.B
        self.state = [IDLE] * B
        self.log: list[list[tuple[int, Optional[list[int]]]]] = [[] for _ in range(B)]
        self.pending: list[list[tuple[int, Optional[list[int]]]]] = [[] for _ in range(B)]
        self.preroll: list[list[list[int]]] = [[] for _ in range(B)]
        self.heard, self.silence, self.onset = [False] * B, [0] * B, [0] * B
        self.reply_frames = [0] * B
        self.buffer = torch.zeros(B, 1, 0)
        self.dec = Decoding(self.model, self.fmt.vocab, B, self.sampling, self.audio_sampling, self.generator,
                            self.min_reply_frames)
        head = self.fmt.serialise(self.system)  # <|bos|> (+ system turns)
        head = [(t, c if c[0] >= 0 else None) for t, c in zip(head.tokens.tolist(), head.audio.tolist())]
        self._forward([list(head) for _ in range(B)])
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()
        self._stack = None

    # ---- public API -----------------------------------------------------------------------------
    def feed(self, chunk: Tensor, end_turn: Union[bool, Tensor] = False) -> Iterator[TickOutput]:
        """Input audio [B, 1, n] (any n) -> one TickOutput per frame it completes. ``end_turn``
        (bool or [B] bool) ends the user's turn after this chunk; a trailing partial frame is then
        zero-padded so the last input sample is inside the last frame."""
        if chunk.dim() != 3 or chunk.shape[0] != self.B or chunk.shape[1] != 1:
            raise ValueError(f"feed expects audio [batch={self.B}, 1, samples], got {list(chunk.shape)}")
        self.buffer = torch.cat([self.buffer, chunk.float().cpu()], -1)
        end = self._rows(end_turn)
        if bool(end.any()) and self.buffer.shape[-1] % self.hop:
            self.buffer = self.codec.pad_to_hop(self.buffer)
        while self.buffer.shape[-1] >= self.hop:
            frame, self.buffer = self.buffer[..., : self.hop], self.buffer[..., self.hop :]
            yield self.tick(frame, end_turn=end if self.buffer.shape[-1] < self.hop else None)

    def reply(self, max_ticks: Optional[int] = None) -> Iterator[TickOutput]:
        """Tick with silent input until no row is responding (the rest of the current replies)."""
        silence = torch.zeros(self.B, 1, self.hop)
        for _ in range(max_ticks or self.max_reply_frames + 8):
            if RESPOND not in self.state:
                return
            yield self.tick(silence)

    def history(self, row: int = 0) -> list[Message]:
        """The conversation of ``row`` as messages, parsed from exactly what its KV cache holds."""
        return self.fmt.parse(self.logged_stream(row))

    def logged_stream(self, row: int = 0) -> Stream:
        """Every position fed to ``row``'s KV cache: tokens [S], audio [S, K]."""
        toks = torch.tensor([t for t, _ in self.log[row]], dtype=torch.long)
        audio = torch.tensor([c if c is not None else [-1] * self.model.n_codebooks for _, c in self.log[row]],
                             dtype=torch.long).view(-1, self.model.n_codebooks)
        return Stream.of(toks, audio)

    # ---- one tick -------------------------------------------------------------------------------
    @torch.no_grad()
    def tick(self, wav: Tensor, end_turn: Optional[Tensor] = None, interrupt: Optional[Tensor] = None,
             unplayed: Optional[Tensor] = None) -> TickOutput:
        """One frame of input audio per row, wav [B, 1, hop] -> one frame of output per row.

        ``end_turn`` / ``interrupt``: [B] bool, explicit end of the user's turn / barge-in. ``unplayed``:
        [B] long, frames already returned that the client has not played yet (default 0); on a
        barge-in they did not reach the user, so they leave the conversation."""
        if wav.shape != (self.B, 1, self.hop):
            raise ValueError(f"tick expects one frame [B={self.B}, 1, hop={self.hop}], got {list(wav.shape)}")
        sp, events = self.sp, []
        frames = self.codec.encode(wav.to(self.codec_device)).cpu()[:, :, 0].tolist()  # B x [K]
        speech = (self.vad(wav) >= self.threshold).tolist() if self.vad is not None else [False] * self.B
        # Without a VAD any non-silent frame opens a user turn (turns then end only explicitly).
        voiced = speech if self.vad is not None else (wav.abs().amax((1, 2)) > SILENCE_PEAK).tolist()
        end_turn, interrupt = self._rows(end_turn).tolist(), self._rows(interrupt).tolist()
        unheard = [0] * self.B if unplayed is None else torch.as_tensor(unplayed).reshape(self.B).tolist()
        items: list[list[tuple[int, Optional[list[int]]]]] = [[] for _ in range(self.B)]
        choose = [False] * self.B
        for b in range(self.B):
            items[b] += self.pending[b]
            self.pending[b] = []
            user_frame = (sp["<|text_pad|>"], frames[b])
            if self.state[b] == IDLE:
                if voiced[b] or end_turn[b]:
                    items[b] += [(sp["<|user|>"], None), (sp["<|audio_start|>"], None)]
                    items[b] += [(sp["<|text_pad|>"], f) for f in self.preroll[b]] + [user_frame]
                    self.preroll[b], self.state[b] = [], LISTEN
                    self.heard[b], self.silence[b] = speech[b], 0
                    events.append((b, "user_start"))
                else:
                    self.preroll[b] = (self.preroll[b] + [frames[b]])[-PREROLL_FRAMES:]
            elif self.state[b] == LISTEN:
                items[b].append(user_frame)
                self.heard[b] |= speech[b]
                self.silence[b] = 0 if speech[b] else self.silence[b] + 1
            elif self.state[b] == RESPOND:
                self.onset[b] = self.onset[b] + 1 if speech[b] else 0
                self.preroll[b] = (self.preroll[b] + [frames[b]])[-self.barge_frames:] if speech[b] else []
                if interrupt[b] or self.onset[b] >= self.barge_frames:
                    self._unsay(b, items[b], min(int(unheard[b]), self.reply_frames[b]))
                    items[b] += [(sp["<|interrupt|>"], None), (sp["<|end_of_turn|>"], None),
                                 (sp["<|user|>"], None), (sp["<|audio_start|>"], None)]
                    items[b] += [(sp["<|text_pad|>"], f) for f in (self.preroll[b] or [frames[b]])]
                    self.preroll[b], self.onset[b], self.state[b] = [], 0, LISTEN
                    self.heard[b], self.silence[b] = True, 0
                    events.append((b, "barge_in"))
                else:
                    choose[b] = True
            if self.state[b] == LISTEN and (end_turn[b] or (self.heard[b] and self.silence[b] >= self.end_frames)):
                items[b] += [(sp["<|audio_end|>"], None), (sp["<|end_of_turn|>"], None),
                             (sp["<|assistant|>"], None), (sp["<|audio_start|>"], None)]
                self._start_reply(b)
                choose[b] = True
                events.append((b, "turn_end"))
        hidden = self._forward(items)
        return self._respond(hidden, choose, events)

    # ---- internals ------------------------------------------------------------------------------
    @property
    def codec_device(self) -> torch.device:
        return next(self.codec.parameters()).device

    def _rows(self, flag: Union[None, bool, Tensor]) -> Tensor:
        if flag is None or isinstance(flag, bool):
            return torch.full((self.B,), bool(flag))
        flag = torch.as_tensor(flag, dtype=torch.bool).cpu()
        if flag.shape != (self.B,):
            raise ValueError(f"per-row flags must have shape [{self.B}], got {list(flag.shape)}")
        return flag

    def _start_reply(self, b: int) -> None:
        self.state[b], self.reply_frames[b], self.onset[b], self.preroll[b] = RESPOND, 0, 0, []
        row = torch.zeros(self.B, dtype=torch.bool)
        row[b] = True
        self.dec.start(row.to(self.device), AUDIO)
        # A reply is a new utterance: the codec decoder starts from silence, as offline decoding does.
        for m in self.codec.decoder.modules():
            if isinstance(m, StreamingModule):
                m.reset_streaming(row.to(self.codec_device))

    def _unsay(self, b: int, items: list[tuple[int, Optional[list[int]]]], n: int) -> None:
        """Drop row b's last ``n`` reply frames: the pending one (not fed yet) from ``items``, the
        others from the log and the KV cache (the cache offset moves back; what lies beyond it is
        never attended to and is overwritten)."""
        while n and items and items[-1][1] is not None:
            items.pop()
            n -= 1
        k = 0
        while k < n and self.log[b][-1 - k][1] is not None:
            k += 1
        if k:
            del self.log[b][-k:]
            offset = self.model.decoder.streaming_offset.clone()
            offset[b] -= k
            self.model.decoder.set_streaming_offset(offset)

    def _forward(self, items: list[list[tuple[int, Optional[list[int]]]]]) -> Optional[Tensor]:
        """Append each row's positions to its KV cache in one batched call; last hidden [B, dim]."""
        lens = [len(x) for x in items]
        S = max(lens)
        if S == 0:
            return None
        dec = self.model.decoder
        offset = dec.streaming_offset.clone()
        if int((offset + torch.tensor(lens, device=offset.device)).max()) > self.model.max_seq_len:
            raise RuntimeError(f"the conversation filled the model's context ({self.model.max_seq_len} positions); "
                               "start a new session or raise model.max_seq_len")
        K = self.model.n_codebooks
        tokens = torch.full((self.B, S), self.sp["<|pad|>"], dtype=torch.long)
        audio = torch.full((self.B, S, K), -1, dtype=torch.long)
        for b, row in enumerate(items):
            for s, (t, c) in enumerate(row):
                tokens[b, s] = t
                if c is not None:
                    audio[b, s] = torch.tensor(c)
            self.log[b] += row
        hidden = self.model(tokens.to(self.device), audio.to(self.device))
        dec.set_streaming_offset(offset + torch.tensor(lens, device=offset.device))
        last = torch.tensor([max(n - 1, 0) for n in lens], device=self.device)
        return hidden[torch.arange(self.B, device=self.device), last]

    def _respond(self, hidden: Optional[Tensor], choose: list[bool], events: list[tuple[int, str]]) -> TickOutput:
        out = torch.zeros(self.B, 1, self.hop)
        speaking = torch.zeros(self.B, dtype=torch.bool)
        if hidden is None or not any(choose):
            return TickOutput(out, speaking, torch.full((self.B, self.model.n_codebooks), -1), events)
        active = torch.tensor(choose, device=self.device)
        tok, codes = self.dec.choose(hidden, active)
        tok_l, codes_l, done = tok.tolist(), codes.tolist(), self.dec.state.eq(DONE).tolist()
        for b in range(self.B):
            if not choose[b]:
                continue
            is_frame = codes_l[b][0] >= 0
            self.pending[b].append((tok_l[b], codes_l[b] if is_frame else None))
            speaking[b] = is_frame
            self.reply_frames[b] += int(is_frame)
            if done[b] or self.reply_frames[b] >= self.max_reply_frames:
                if not done[b]:  # reply too long: close it as if the model had
                    self.pending[b] += [(self.sp["<|audio_end|>"], None), (self.sp["<|end_of_turn|>"], None)]
                self.state[b] = IDLE
                events.append((b, "reply_end"))
        if bool(speaking.any()):
            frame = codes.clamp(min=0)[:, :, None].to(self.codec_device)  # rows not speaking decode dummies
            out = self.codec.decode(frame).cpu() * speaking[:, None, None]
        return TickOutput(out, speaking, torch.where(speaking[:, None], codes.cpu(), -1), events)
