"""Streaming speech-to-speech: B concurrent spoken conversations, in lock-step ticks of one frame.

Each :meth:`SpeechSession.tick` takes one codec frame of input audio per row (``hop`` samples,
80 ms at 12.5 Hz) and returns one frame of output audio per row:

* the frame is encoded by the codec in streaming mode; a row that is listening prefills it into
  the decoder's KV cache at once, so when the turn ends only one decoder step stands between the
  last input sample and the first output frame;
* a user turn opens on speech (VAD; without one, on any non-silent frame, keeping
  ``PREROLL_FRAMES`` frames before it) and ends by VAD (speech heard, then ``serving.end_of_turn_ms``
  of silence; the ``serving`` knobs are a :class:`omni.config.ServingConfig`) or by an explicit
  ``end_turn`` flag. Of the silence after the turn's last speech, only ``serving.end_of_turn_keep_ms``
  stay in the turn (the rest leaves the KV cache, as training utterances end with little silence);
  the row then prefills ``<|audio_end|><|end_of_turn|><|assistant|><|audio_start|>``
  and samples its first frame in the same tick. An explicit end that arrives after the input ended on a frame boundary (an empty
  chunk) gets a tick of its own, without input;
* a responding row generates one frame per tick (text-stream token + K codes from the depth
  decoder), decodes it with the streaming codec and returns it immediately; when its speech ends
  (``<|audio_end|>``, or the reply reaches ``serving.max_reply_frames``) the codec's held-back end
  (``codec.flush``: the vocoder's lookahead, ~151 ms) comes in that tick's ``tail`` with a
  ``speech_end`` event (not for a reply the guardrail stopped);
* voice guardrail (omni/infer/guardrail.py, on unless ``serving.voice_guardrail`` is off): every
  ``serving.guardrail_every_ms`` of a row's reply audio, from ``guardrail_first_ms`` on, its latest
  ``guardrail_window_ms`` are compared with the preset voice (as heard through ``codec``:
  ``voice_reference``); a reply whose voice deviates stops speaking at once (event
  ``voice_stop``, logged). The row goes on with its text monologue only: it still samples its reply
  to the end (text-stream tokens and frames, so the model's context stays what it was trained on),
  but no frame of it is decoded or returned; ``TickOutput.tokens`` carries the monologue and
  ``history`` holds the whole reply (on a barge-in, the frames it kept back leave it, as unplayed ones do);
* barge-in: speech from the user for ``serving.barge_in_ms`` while a row responds (or an explicit
  ``interrupt`` flag) ends the reply with ``<|interrupt|>`` after the frames the user heard — all
  those returned, less the ``unplayed`` ones a client reports still in its playback buffer, which are
  cut from the history and the KV cache (``Decoder.set_streaming_offset``) — and opens a user turn
  with the frames that interrupted it.

A tick runs in stages, each its own function: sense (codec encode, VAD) → turn-taking
(:func:`omni.infer.turns.advance_turns`, pure, on the [B]-tensor :class:`SessionState`) → barge-in
rewind → token assembly → one batched decoder call → the next position of responding rows
(:class:`omni.infer.decoding.Decoding`) → codec decode.

The session is a :class:`~omni.streaming.StreamingModule` over the model, the codec, the VAD and
the decoding state: ``with session:`` enters all of them with ``streaming(B)``; what the session
itself carries between ticks (turn state, input samples short of a frame, recent input frames,
the sampled position not yet fed, the log of every position fed) lives in its streaming state.

Rows advance independently inside one batched decoder call: each row feeds its own number of
positions; shorter rows are padded and their cache offset is set back with
``Decoder.set_streaming_offset`` (padding lands beyond the offset, where it is never visible and
is overwritten later). Every position fed is logged per row, so :meth:`history` is exactly what the
KV cache holds.

Input samples must be finite: a chunk holding a NaN or infinite sample is refused whole
(``AudioError``, a ``ValueError``) before anything is consumed, since one such sample would stay in
the codec's and the VAD's state and spoil every later frame of its row.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence, Union

import torch

from omni.config import ServingConfig
from omni.conversation import ConversationFormat, Message, Stream
from omni.infer.decoding import AUDIO, Decoding
from omni.infer.guardrail import VoiceGuardrail
from omni.infer.turns import Phase, SessionState, TurnEvents, TurnRules, advance_turns, end_turns, finish_replies
from omni.infer.vad import VoiceActivity
from omni.io.audio import check_finite
from omni.model.omni import OmniModel
from omni.model.sampling import SamplingConfig
from omni.streaming import StreamingModule, StreamingState
from omni.tokenizers.codec import SpeechCodec

Tensor = torch.Tensor

PREROLL_FRAMES = 2  # frames kept from before VAD speech onset, so the first syllable is not cut
SILENCE_PEAK = 1e-3  # without a VAD, input frames whose peak stays below this are silence
Item = tuple[int, Optional[list[int]]]  # one stream position: token id, K codes (None: no audio frame)


@dataclass
class TickOutput:
    """audio [B, 1, hop] (zeros where a row is not speaking); speaking [B] bool; codes [B, K] of the
    frame each speaking row produced (-1 elsewhere); events (row, name) with names user_start,
    turn_end, speech_end, reply_end, barge_in, voice_stop; tokens [B] long, the text-stream token each
    responding row sampled (its monologue, which goes on after a voice stop; -1 elsewhere); tail
    [B, 1, n]: for the rows with a speech_end event, the end of their speech, which the codec held back
    until then (its streaming lookahead), to be played after ``audio`` (zeros in other rows; n = 0
    when no row's speech ended)."""

    audio: Tensor
    speaking: Tensor
    codes: Tensor
    events: list[tuple[int, str]] = field(default_factory=list)
    tokens: Optional[Tensor] = None
    tail: Tensor = field(default_factory=lambda: torch.zeros(0, 1, 0))


class _Live(StreamingState):
    """What a session carries between ticks (CPU tensors, batch first)."""

    def __init__(self, batch: int, K: int, recent: int, context: int) -> None:
        self.turns = SessionState.start(batch)
        self.buffer = torch.zeros(batch, 1, 0)  # input samples short of a whole frame
        self.recent = torch.zeros(batch, recent, K, dtype=torch.long)  # latest input frames, newest last
        # The position sampled last tick (+ the two closing tokens of a reply cut at its length), fed next tick.
        self.pending_tokens = torch.zeros(batch, 3, dtype=torch.long)
        self.pending_audio = torch.full((batch, 3, K), -1, dtype=torch.long)
        self.pending = torch.zeros(batch, dtype=torch.long)
        self.muted = torch.zeros(batch, dtype=torch.long)  # reply frames not returned since a voice stop
        # Every position fed, as the KV cache holds it; a row's length is its decoder offset.
        self.log_tokens = torch.zeros(batch, context, dtype=torch.long)
        self.log_audio = torch.full((batch, context, K), -1, dtype=torch.long)

    def reset(self, mask: Optional[Tensor] = None) -> None:
        rows = torch.ones(self.pending.shape[0], dtype=torch.bool) if mask is None else mask.cpu()
        self.turns = SessionState.start(len(rows)).where(rows, self.turns)
        self.buffer[rows] = 0.0
        self.recent[rows] = 0
        self.pending[rows] = 0
        self.muted[rows] = 0


class SpeechSession(StreamingModule):
    """B concurrent speech-to-speech conversations over one model, codec and KV cache.

    Use as a context manager (it enters the streaming state of the session, model, codec and VAD)::

        with SpeechSession(model, codec, fmt, batch_size=2, vad=VoiceActivity(codec.sample_rate)) as s:
            for chunk in mic:                       # [B, 1, n] float at codec.sample_rate
                for out in s.feed(chunk):           # one TickOutput per completed frame
                    play(out.audio)

    ``compile=True`` runs one-position decoder and depth steps through the fast path
    (omni/infer/compile.py: torch.compile, CUDA graphs on GPU). ``voice_reference`` [256]: the voice
    guardrail's preset-voice embedding through ``codec`` (:func:`omni.infer.guardrail.load_reference`;
    None: the clean-speech one).
    """

    def __init__(self, model: OmniModel, codec: SpeechCodec, fmt: ConversationFormat, batch_size: int = 1, *,
                 vad: Optional[VoiceActivity] = None, system: Sequence[Message] = (),
                 sampling: SamplingConfig = SamplingConfig(), audio_sampling: Optional[SamplingConfig] = None,
                 generator: Optional[torch.Generator] = None, serving: ServingConfig = ServingConfig(),
                 min_reply_frames: int = 0, compile: bool = False, voice_reference: Optional[Tensor] = None) -> None:
        super().__init__()
        if codec.cfg.num_codebooks != model.n_codebooks or codec.cfg.codebook_size != model.codebook_size:
            raise ValueError(f"codec has {codec.cfg.num_codebooks}x{codec.cfg.codebook_size} codes, the model "
                             f"expects {model.n_codebooks}x{model.codebook_size}: use the codec the model was trained with")
        codec.vocoder  # loaded now (lazily otherwise), so the session's streaming state includes it
        self.model, self.codec, self.vad, self.fmt, self.B = model, codec, vad, fmt, batch_size
        self.system = list(system)
        self.hop = codec.hop_length
        frame_ms = 1000.0 / codec.frame_rate
        # Without a VAD nothing is known about speech: turns end, and replies stop, only explicitly.
        self.rules = TurnRules(
            max_reply_frames=serving.max_reply_frames, preroll_frames=PREROLL_FRAMES,
            end_frames=max(1, round(serving.end_of_turn_ms / frame_ms)) if vad is not None else 0,
            barge_frames=max(1, round(serving.barge_in_ms / frame_ms)) if vad is not None else 0)
        self.threshold = serving.vad_threshold
        self.keep_silence = round(serving.end_of_turn_keep_ms / frame_ms)
        # Frames a user turn can open with: the preroll, or the speech run that barged in (at most
        # the context, which could not hold more).
        self.recent_frames = min(max(PREROLL_FRAMES, self.rules.barge_frames) + 1, model.max_seq_len)
        self.dec = Decoding(model, fmt.vocab, sampling, audio_sampling, generator, min_reply_frames, compile=compile)
        self.guardrail = VoiceGuardrail.from_serving(serving, codec.sample_rate, voice_reference)
        self.device = model.decoder.tok_embeddings.weight.device
        self.sp = fmt.sp
        self._stack: Optional[contextlib.ExitStack] = None

    # ---- lifetime -------------------------------------------------------------------------------
    def _init_streaming_state(self, batch_size: int, **_: Any) -> _Live:
        return _Live(batch_size, self.model.n_codebooks, self.recent_frames, self.model.max_seq_len)

    def __enter__(self) -> "SpeechSession":
        self._stack = contextlib.ExitStack()
        self.model.eval()
        self._stack.enter_context(torch.no_grad())
        self._stack.enter_context(self.streaming(self.B))
        self._forward([self._head() for _ in range(self.B)])
        return self

    def _head(self) -> list[Item]:
        """The positions every conversation starts with: <|bos|> (+ the system turns)."""
        head = self.fmt.serialise(self.system)
        return [(t, c if c[0] >= 0 else None) for t, c in zip(head.tokens.tolist(), head.audio.tolist())]

    @torch.no_grad()
    def restart(self, rows: Union[bool, Tensor]) -> None:
        """Start a new conversation in ``rows`` ([B] bool, or True for all): every streaming state of
        theirs — KV caches, codec, VAD, decoding modes, turn state, buffered input — is reset through
        ``reset_streaming(rows)``, then their head is prefilled. Other rows are untouched."""
        rows = self._rows(rows)
        self.reset_streaming(rows)
        self._forward([self._head() if r else [] for r in rows.tolist()])

    def __exit__(self, *exc) -> None:
        self._stack.close()
        self._stack = None

    @property
    def live(self) -> _Live:
        return self.require_streaming_state("use it inside `with SpeechSession(...) as s:`")

    @property
    def state(self) -> SessionState:
        """The turn-taking state of every row ([B] tensors)."""
        return self.live.turns

    # ---- public API -----------------------------------------------------------------------------
    def feed(self, chunk: Tensor, end_turn: Union[bool, Tensor] = False) -> Iterator[TickOutput]:
        """Input audio [B, 1, n] (any n) -> one TickOutput per frame it completes. ``end_turn``
        (bool or [B] bool) ends the user's turn after this chunk; a trailing partial frame is then
        zero-padded so the last input sample is inside the last frame, and if the input already
        ended on a frame boundary (e.g. an empty chunk) the end gets a tick of its own.

        Raises ``AudioError`` (a ValueError) naming the rows when the chunk holds a NaN or infinite
        sample; the chunk is then refused whole and nothing changes (feed it again with those rows
        repaired, e.g. as silence)."""
        if chunk.dim() != 3 or chunk.shape[0] != self.B or chunk.shape[1] != 1:
            raise ValueError(f"feed expects audio [batch={self.B}, 1, samples], got {list(chunk.shape)}")
        bad = ~torch.isfinite(chunk).flatten(1).all(1)
        if bool(bad.any()):
            check_finite(chunk, f"the chunk for row(s) {bad.nonzero()[:, 0].tolist()}")
        end = self._rows(end_turn)
        return self._ticks(chunk.float().cpu(), end)

    def _ticks(self, chunk: Tensor, end: Tensor) -> Iterator[TickOutput]:
        live = self.live
        live.buffer = torch.cat([live.buffer, chunk], -1)
        if bool(end.any()):
            if live.buffer.shape[-1] < self.hop:  # on a frame boundary (or short of one frame)
                if live.buffer.shape[-1] == 0:
                    yield self._step(None, end, None, None)
                    return
            live.buffer = self.codec.pad_to_hop(live.buffer)
        while live.buffer.shape[-1] >= self.hop:
            frame, live.buffer = live.buffer[..., : self.hop], live.buffer[..., self.hop :]
            yield self.tick(frame, end_turn=end if live.buffer.shape[-1] < self.hop else None)

    def reply(self, max_ticks: Optional[int] = None) -> Iterator[TickOutput]:
        """Tick with silent input until no row is responding (the rest of the current replies)."""
        silence = torch.zeros(self.B, 1, self.hop)
        for _ in range(max_ticks or self.rules.max_reply_frames + 8):
            if not bool((self.state.phase == Phase.RESPOND).any()):
                return
            yield self.tick(silence)

    def history(self, row: int = 0) -> list[Message]:
        """The conversation of ``row`` as messages, parsed from exactly what its KV cache holds."""
        return self.fmt.parse(self.logged_stream(row))

    def logged_stream(self, row: int = 0) -> Stream:
        """Every position fed to ``row``'s KV cache: tokens [S], audio [S, K]."""
        n = int(self.model.decoder.streaming_offset[row])
        return Stream.of(self.live.log_tokens[row, :n].clone(), self.live.log_audio[row, :n].clone())

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
        check_finite(wav, "the input frame")
        return self._step(wav, self._rows(end_turn), self._rows(interrupt), unplayed)

    def _step(self, wav: Optional[Tensor], end_turn: Tensor, interrupt: Optional[Tensor],
              unplayed: Optional[Tensor]) -> TickOutput:
        """A tick; ``wav`` None: no input frame (an explicit end of turn on a frame boundary)."""
        live = self.live
        before = live.turns
        if wav is None:
            frames = None
            live.turns, ev = end_turns(before, end_turn)
        else:
            frames, speech = self._sense(wav)
            live.turns, ev = advance_turns(before, speech, end_turn, interrupt, self.rules)
            live.recent = torch.cat([live.recent[:, 1:], frames[:, None]], 1)
        if bool(ev.barge_in.any()):
            self._rewind(ev.barge_in, before.reply_frames, unplayed)
        if bool(ev.turn_end.any()):
            ev = self._cut_silence(ev, this_frame=frames is not None)
            self._start_replies(ev.turn_end)
        hidden = self._forward(self._assemble(ev, frames))
        return self._respond(hidden, ev)

    # ---- stages ---------------------------------------------------------------------------------
    def _sense(self, wav: Tensor) -> tuple[Tensor, Tensor]:
        """Codec codes [B, K] of the frame and speech [B] bool (the VAD; without one, any sound)."""
        frames = self.codec.encode(wav.to(self.codec_device)).cpu()[:, :, 0]
        if self.vad is not None:
            return frames, (self.vad(wav) >= self.threshold).cpu()
        return frames, wav.abs().amax((1, 2)).cpu() > SILENCE_PEAK

    def _rewind(self, rows: Tensor, reply_frames: Tensor, unplayed: Optional[Tensor]) -> None:
        """Barge-in: drop each interrupted row's last ``unplayed`` reply frames (the user never
        heard them): the pending one (not fed yet), then the others from the log and the KV cache
        (the cache offset moves back; what lies beyond it is never attended to and is overwritten)."""
        live = self.live
        unheard = torch.zeros(self.B, dtype=torch.long) if unplayed is None else torch.as_tensor(unplayed).reshape(self.B).cpu()
        unheard = unheard + live.muted  # frames after a voice stop were never returned either
        offset = self.model.decoder.streaming_offset.clone()
        for b in rows.nonzero()[:, 0].tolist():
            n = min(int(unheard[b]), int(reply_frames[b]))
            while n and live.pending[b] and live.pending_audio[b, live.pending[b] - 1, 0] >= 0:
                live.pending[b] -= 1
                n -= 1
            offset[b] -= self._fed_frames(b, int(offset[b]), n)
        self.model.decoder.set_streaming_offset(offset)

    def _fed_frames(self, row: int, end: int, n: int) -> int:
        """How many of the last ``n`` positions fed to ``row`` before ``end`` are audio frames in a run
        (counted back from ``end``, stopping at the first marker): what may leave its KV cache."""
        k = 0
        while k < n and self.live.log_audio[row, end - 1 - k, 0] >= 0:
            k += 1
        return k

    def _cut_silence(self, ev: TurnEvents, this_frame: bool) -> TurnEvents:
        """Turns that end now keep ``keep_silence`` of their trailing silent frames: this tick's frame
        (the last of them, not fed yet) is left out, earlier ones leave the log and the KV cache.
        Returns the events with ``listen`` off for rows whose frame is left out."""
        cut = (ev.trailing - self.keep_silence).clamp(min=0)
        if not bool(cut.any()):
            return ev
        offset = self.model.decoder.streaming_offset.clone()
        listen = ev.listen.clone()
        for b in cut.nonzero()[:, 0].tolist():
            n = int(cut[b])
            if this_frame and listen[b]:
                listen[b], n = False, n - 1
            offset[b] -= self._fed_frames(b, int(offset[b]), n)
        self.model.decoder.set_streaming_offset(offset)
        return dataclasses.replace(ev, listen=listen)

    def _start_replies(self, rows: Tensor) -> None:
        """Rows whose user turn ended speak next: the decoder forces audio, and the codec decoder and
        its vocoder start afresh (a reply is a new utterance, as in offline decoding). The reply's
        audio is its offline decoding delayed by the vocoder's lookahead; that many samples of its
        end come out when its speech ends (:meth:`_respond`, ``codec.flush``)."""
        self.dec.start(rows.to(self.device), AUDIO)
        self.codec.decoder.reset_streaming(rows.to(self.codec_device))
        self.codec.vocoder.reset_streaming(rows.to(self.codec_device))
        if self.guardrail is not None:
            self.guardrail.reset_streaming(rows)
        self.live.muted[rows.cpu()] = 0

    def _assemble(self, ev: TurnEvents, frames: Optional[Tensor]) -> list[list[Item]]:
        """Each row's positions for this tick: its pending position, the markers its events call
        for, the user's frames, in stream order (omni/conversation.py)."""
        live, sp = self.live, self.sp
        opening = ev.opening.clamp(max=live.recent.shape[1]).tolist()
        rows: list[list[Item]] = []
        for b in range(self.B):
            n = int(live.pending[b])
            items: list[Item] = [(t, c if c[0] >= 0 else None) for t, c in
                                 zip(live.pending_tokens[b, :n].tolist(), live.pending_audio[b, :n].tolist())]
            if ev.barge_in[b]:
                items += [(sp["<|interrupt|>"], None), (sp["<|end_of_turn|>"], None)]
            if ev.barge_in[b] or ev.user_start[b]:
                items += [(sp["<|user|>"], None), (sp["<|audio_start|>"], None)]
            if opening[b]:
                items += [(sp["<|text_pad|>"], f) for f in live.recent[b, -opening[b]:].tolist()]
            elif ev.listen[b] and frames is not None:
                items.append((sp["<|text_pad|>"], frames[b].tolist()))
            if ev.turn_end[b]:
                items += [(sp["<|audio_end|>"], None), (sp["<|end_of_turn|>"], None),
                          (sp["<|assistant|>"], None), (sp["<|audio_start|>"], None)]
            rows.append(items)
        live.pending.zero_()
        return rows

    def _forward(self, items: list[list[Item]]) -> Optional[Tensor]:
        """Append each row's positions to its KV cache in one batched call; last hidden [B, dim]."""
        lens = torch.tensor([len(x) for x in items])
        S = int(lens.max())
        if S == 0:
            return None
        dec = self.model.decoder
        offset = dec.streaming_offset.cpu().clone()  # the decoder advances its own in place
        if int((offset + lens).max()) > self.model.max_seq_len:
            raise RuntimeError(f"the conversation filled the model's context ({self.model.max_seq_len} positions); "
                               "start a new session or raise model.max_seq_len")
        K, live = self.model.n_codebooks, self.live
        tokens = torch.full((self.B, S), self.sp["<|pad|>"], dtype=torch.long)
        audio = torch.full((self.B, S, K), -1, dtype=torch.long)
        for b, row in enumerate(items):
            for s, (t, c) in enumerate(row):
                tokens[b, s] = t
                if c is not None:
                    audio[b, s] = torch.tensor(c)
            o, n = int(offset[b]), len(row)
            live.log_tokens[b, o : o + n], live.log_audio[b, o : o + n] = tokens[b, :n], audio[b, :n]
        step = self.dec.step if S == 1 else self.model  # one position: the (compiled) decode step
        hidden = step(tokens.to(self.device), audio.to(self.device))
        dec.set_streaming_offset((offset + lens).to(dec.streaming_offset.device))
        last = (lens - 1).clamp(min=0).to(self.device)
        return hidden[torch.arange(self.B, device=self.device), last]

    def _respond(self, hidden: Optional[Tensor], ev: TurnEvents) -> TickOutput:
        """The next position of every responding row (kept pending for the next tick); its audio frame
        decoded at once unless the voice guardrail stopped the reply; replies that ended."""
        live = self.live
        events = ev.named()
        out = torch.zeros(self.B, 1, self.hop)
        choose = live.turns.phase == Phase.RESPOND
        if hidden is None or not bool(choose.any()):
            return TickOutput(out, torch.zeros(self.B, dtype=torch.bool), torch.full((self.B, self.model.n_codebooks), -1),
                              events, torch.full((self.B,), -1), torch.zeros(self.B, 1, 0))
        tok, codes = self.dec.choose(hidden, choose.to(self.device))
        tok, codes, done = tok.cpu(), codes.cpu(), self.dec.done.cpu()
        generated = choose & (codes[:, 0] >= 0)
        live.turns, ended, cut = finish_replies(live.turns, choose, generated, done, self.rules)
        # A reply cut at max_reply_frames is closed as if the model had closed it.
        closing = torch.tensor([self.sp["<|audio_end|>"], self.sp["<|end_of_turn|>"]])
        live.pending_tokens[choose] = torch.cat([tok[:, None], closing.expand(self.B, 2)], 1)[choose]
        live.pending_audio[choose] = torch.cat([codes[:, None], torch.full((self.B, 2, self.model.n_codebooks), -1)], 1)[choose]
        live.pending = torch.where(choose, 1 + 2 * cut.long(), live.pending)
        speaking = generated
        audible = torch.ones_like(choose) if self.guardrail is None else ~self.guardrail.stopped
        speaking = speaking & audible  # stopped replies go on silently
        # Speech that ends now: closed by <|audio_end|> (its last frame came last tick; flushed before
        # this tick's dummy frames reach the row's codec state) or cut at its length (after this frame).
        closed = choose & (tok == self.sp["<|audio_end|>"]) & audible
        tails = [self.codec.flush(closed.to(self.codec_device)).cpu()] if bool(closed.any()) else []
        if bool(speaking.any()):
            frame = codes.clamp(min=0)[:, :, None].to(self.codec_device)  # rows not speaking decode dummies
            out = self.codec.decode(frame).cpu() * speaking[:, None, None]
            if self.guardrail is not None:
                stop = self.guardrail(out, speaking)
                speaking = speaking & ~stop
                out *= speaking[:, None, None]
                events += [(b, "voice_stop") for b in stop.nonzero()[:, 0].tolist()]
        cut = cut & speaking  # a reply the guardrail stopped plays no end
        if bool(cut.any()):
            tails.append(self.codec.flush(cut.to(self.codec_device)).cpu())
        tail = torch.stack(tails).sum(0) if tails else torch.zeros(self.B, 1, 0)  # disjoint rows, same length
        live.muted += (generated & ~speaking).long()
        events += [(b, "reply_end") for b in ended.nonzero()[:, 0].tolist()]
        events += [(b, "speech_end") for b in (closed | cut).nonzero()[:, 0].tolist()]
        return TickOutput(out, speaking, torch.where(speaking[:, None], codes, -1), events, torch.where(choose, tok, -1), tail)

    # ---- helpers --------------------------------------------------------------------------------
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
