"""The omni conversation format: messages of text/audio/image/video parts <-> one token stream.

A conversation is a list of :class:`Message` (role ``system`` | ``user`` | ``assistant``) whose
content is a list of parts, already tokenized by the modality tokenizers:

* :class:`Text` — a string (text tokenizer);
* :class:`Audio` — codec codes ``[K, frames]`` plus, for spoken answers, the *inner monologue*
  text (the words being spoken);
* :class:`Image` — image-tokenizer codes ``[h, w]``;
* :class:`Video` — video-tokenizer codes ``[T', h, w]``.

**Serialised stream** (one decoder position per entry; :class:`Stream` holds the tensors)::

    <|bos|> <|user|> parts... <|end_of_turn|> <|assistant|> parts... <|end_of_turn|> ...
    text   : its text tokens
    audio  : <|audio_start|> F F F ... F <|audio_end|>        (or ... F <|interrupt|> if cut by barge-in)
    image  : <|image_start|> c c ... c (h*w codes, row-major) <|image_end|>
    video  : <|video_start|> <|frame|> c...c <|frame|> c...c ... <|video_end|>

**Vocabulary** (:class:`OmniVocab`): text ids (the text tokenizer's, SPECIAL_TOKENS included) come
first, then the image code range, then the video code range. Audio codes are *not* in this
vocabulary: each audio frame ``F`` is one position whose input embedding is the sum of K codebook
embeddings (one table per codebook, see omni/model/omni.py) plus the embedding of its
*text-stream token*.

**Inner monologue** (the text of a spoken answer, Moshi style): every audio frame carries one
text-stream token. For a spoken answer its tokens are laid on the frames left-aligned — token i on
frame i — and the remaining frames carry ``<|text_pad|>``; user audio frames carry
``<|text_pad|>`` only. There is no extra delay: at 12.5 frames/s and ~3 text tokens per second of
speech the text runs ahead of the words it transcribes, so the speech follows its text. At
generation the decoder predicts the next text-stream token first; a text token or ``<|text_pad|>``
means "another frame follows" (the depth decoder then predicts its K codes conditioned on that
token), ``<|audio_end|>`` ends the speech.

**Positions**: one rotary position per stream entry, counting from 0 at each conversation's
``<|bos|>`` (and restarting per document when rows are packed). Audio positions therefore advance
with time at the codec frame rate (one per 80 ms frame); an image is h*w consecutive positions in
row-major order. 1-D positions are what the streaming KV cache writes (``offset + arange``), so
training and serving use the same scheme.

**Attention**: causal everywhere except *input* images and video frames (user/system turns): the
h*w codes of one image or one video time step share a span id and see each other in both
directions (``AttentionMask.span_ids``). Generated images (assistant turns) stay causal, because
they are produced one code at a time.

**Loss**: positions of assistant turns (after ``<|assistant|>``, through its ``<|end_of_turn|>``)
are targets; the text head predicts their tokens and the depth decoder their audio codes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Union

import torch

from omni.tokenizers.base import TextTokenizer

Tensor = torch.Tensor

ROLES = ("system", "user", "assistant")
# Modality of each stream position (for per-modality losses).
MOD_TEXT, MOD_AUDIO, MOD_IMAGE, MOD_VIDEO = 0, 1, 2, 3
MODALITY_NAMES = ("text", "audio", "image", "video")


@dataclass
class Text:
    text: str


@dataclass
class Audio:
    """codes [K, frames] long; ``text``: the inner monologue of a spoken answer (assistant only);
    ``interrupted``: the speech was cut by barge-in (serialised with ``<|interrupt|>``)."""

    codes: Tensor
    text: str = ""
    interrupted: bool = False


@dataclass
class Image:
    """codes [h, w] long (image-tokenizer ids)."""

    codes: Tensor


@dataclass
class Video:
    """codes [T', h, w] long (video-tokenizer ids)."""

    codes: Tensor


Part = Union[Text, Audio, Image, Video]


@dataclass
class Message:
    role: str
    content: list[Part]

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; use one of {ROLES}")
        if isinstance(self.content, (str, Text, Audio, Image, Video)):
            self.content = [self.content]
        self.content = [Text(p) if isinstance(p, str) else p for p in self.content]
        for p in self.content:
            if not isinstance(p, (Text, Audio, Image, Video)):
                raise TypeError(f"message part must be Text, Audio, Image or Video, got {type(p).__name__}")


@dataclass
class OmniVocab:
    """Layout of the unified vocabulary and the audio codebooks (all sizes from the tokenizers)."""

    text_size: int
    image_codes: int
    image_grid: tuple[int, int]
    video_codes: int
    video_grid: tuple[int, int]
    audio_codebooks: int
    audio_codes: int
    specials: dict[str, int] = field(default_factory=dict)

    @property
    def image_offset(self) -> int:
        return self.text_size

    @property
    def video_offset(self) -> int:
        return self.text_size + self.image_codes

    @property
    def size(self) -> int:
        """Decoder vocabulary size, rounded up to a multiple of 64 (tensor-core friendly)."""
        n = self.text_size + self.image_codes + self.video_codes
        return (n + 63) // 64 * 64

    def __getitem__(self, special: str) -> int:
        return self.specials[special]

    @classmethod
    def build(cls, text: TextTokenizer, codec_meta: dict[str, Any], image_meta: dict[str, Any],
              video_meta: dict[str, Any]) -> "OmniVocab":
        """From the text tokenizer and the ``metadata`` of the codec / image / video tokenizers."""
        names = ("<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>",
                 "<|end_of_turn|>", "<|audio_start|>", "<|audio_end|>", "<|image_start|>",
                 "<|image_end|>", "<|video_start|>", "<|video_end|>", "<|frame|>", "<|text_pad|>",
                 "<|interrupt|>")
        return cls(
            text_size=text.vocab_size,
            image_codes=int(image_meta["codebook_size"]),
            image_grid=tuple(int(g) for g in image_meta["grid"]),
            video_codes=int(video_meta["codebook_size"]),
            video_grid=tuple(int(g) for g in video_meta["grid"]),
            audio_codebooks=int(codec_meta["num_codebooks"]),
            audio_codes=int(codec_meta["codebook_size"]),
            specials={n: text.token_id(n) for n in names},
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OmniVocab":
        d = dict(d)
        d["image_grid"], d["video_grid"] = tuple(d["image_grid"]), tuple(d["video_grid"])
        return cls(**d)


@dataclass
class Stream:
    """A serialised conversation; every tensor is indexed by stream position s.

    tokens [S] long      unified-vocabulary id (the text-stream token for audio frames)
    audio  [S, K] long   codec codes of audio frames, -1 elsewhere
    span   [S] long      bidirectional span id (> 0 inside input images / video frames)
    loss   [S] bool      position is a training target (assistant turns)
    modality [S] long    MOD_TEXT | MOD_AUDIO | MOD_IMAGE | MOD_VIDEO
    """

    tokens: Tensor
    audio: Tensor
    span: Tensor
    loss: Tensor
    modality: Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @staticmethod
    def of(tokens: Tensor, audio: Tensor) -> "Stream":
        """A stream of generated positions (no spans, no loss): tokens [S], audio [S, K]."""
        zeros = torch.zeros_like(tokens)
        return Stream(tokens, audio, zeros, zeros.bool(), torch.where(audio[:, 0] >= 0, MOD_AUDIO, MOD_TEXT))

    @staticmethod
    def cat(streams: list["Stream"]) -> "Stream":
        """Concatenate streams; span ids are renumbered so they stay unique."""
        spans, base = [], 0
        for s in streams:
            spans.append(torch.where(s.span > 0, s.span + base, 0))
            base += int(s.span.max()) if len(s) else 0
        return Stream(*(torch.cat([getattr(s, f) for s in streams]) for f in ("tokens", "audio")),
                      torch.cat(spans), *(torch.cat([getattr(s, f) for s in streams]) for f in ("loss", "modality")))


class _Builder:
    """Accumulates stream positions (plain Python lists, turned into tensors once)."""

    def __init__(self, K: int) -> None:
        self.K = K
        self.tokens: list[int] = []
        self.audio: list[list[int]] = []
        self.span: list[int] = []
        self.loss: list[bool] = []
        self.modality: list[int] = []
        self.n_spans = 0

    def add(self, tokens: Iterable[int], loss: bool, modality: int = MOD_TEXT, span: int = 0,
            audio: Optional[Tensor] = None) -> None:
        tokens = list(tokens)
        n = len(tokens)
        self.tokens += tokens
        self.audio += audio.tolist() if audio is not None else [[-1] * self.K] * n
        self.span += [span] * n
        self.loss += [loss] * n
        self.modality += [modality] * n

    def new_span(self) -> int:
        self.n_spans += 1
        return self.n_spans

    def build(self) -> Stream:
        return Stream(
            torch.tensor(self.tokens, dtype=torch.long),
            torch.tensor(self.audio, dtype=torch.long).view(-1, self.K),
            torch.tensor(self.span, dtype=torch.long),
            torch.tensor(self.loss, dtype=torch.bool),
            torch.tensor(self.modality, dtype=torch.long),
        )


class ConversationFormat:
    """Serialise messages to a :class:`Stream` and parse streams back into messages."""

    def __init__(self, text: TextTokenizer, vocab: OmniVocab) -> None:
        self.text, self.vocab = text, vocab
        self.sp = vocab.specials
        self._text_ids_end = vocab.text_size

    # ---- serialise ----------------------------------------------------------------------------
    def monologue(self, text: str, frames: int) -> list[int]:
        """Text-stream tokens of ``frames`` audio frames: ``text``'s tokens left-aligned, then pads."""
        ids = self.text.encode(text) if text else []
        if len(ids) > frames:
            raise ValueError(
                f"the monologue has {len(ids)} text tokens but the speech only {frames} frames; "
                "one text token per frame at most — shorten the text or pass longer audio"
            )
        return ids + [self.sp["<|text_pad|>"]] * (frames - len(ids))

    def _part(self, b: _Builder, part: Part, loss: bool, bidirectional: bool) -> None:
        sp, v = self.sp, self.vocab
        if isinstance(part, Text):
            b.add(self.text.encode(part.text), loss)
        elif isinstance(part, Audio):
            codes = _check_codes(part.codes, 2, "audio", v.audio_codes)
            if codes.shape[0] != v.audio_codebooks:
                raise ValueError(f"audio codes have {codes.shape[0]} codebooks; this model uses {v.audio_codebooks}")
            b.add([sp["<|audio_start|>"]], loss)
            b.add(self.monologue(part.text, codes.shape[1]), loss, MOD_AUDIO, audio=codes.T)
            b.add([sp["<|interrupt|>" if part.interrupted else "<|audio_end|>"]], loss)
        elif isinstance(part, Image):
            codes = _check_codes(part.codes, 2, "image", v.image_codes)
            if tuple(codes.shape) != v.image_grid:
                raise ValueError(f"image codes have grid {tuple(codes.shape)}; this model uses {v.image_grid}")
            b.add([sp["<|image_start|>"]], loss)
            b.add((codes.flatten() + v.image_offset).tolist(), loss, MOD_IMAGE, b.new_span() if bidirectional else 0)
            b.add([sp["<|image_end|>"]], loss)
        elif isinstance(part, Video):
            codes = _check_codes(part.codes, 3, "video", v.video_codes)
            if tuple(codes.shape[1:]) != v.video_grid:
                raise ValueError(f"video codes have grid {tuple(codes.shape[1:])}; this model uses {v.video_grid}")
            b.add([sp["<|video_start|>"]], loss)
            for step in codes:
                b.add([sp["<|frame|>"]], loss)
                b.add((step.flatten() + v.video_offset).tolist(), loss, MOD_VIDEO, b.new_span() if bidirectional else 0)
            b.add([sp["<|video_end|>"]], loss)
        else:
            raise TypeError(f"unknown part {type(part).__name__}")

    def serialise(self, messages: list[Message], add_generation_prompt: bool = False,
                  reply_in_speech: bool = False) -> Stream:
        """Messages -> stream. ``add_generation_prompt`` opens the assistant's turn (and its speech,
        with ``reply_in_speech``) so that generation continues from there."""
        b = _Builder(self.vocab.audio_codebooks)
        b.add([self.sp["<|bos|>"]], False)
        for m in messages:
            if not isinstance(m, Message):
                raise TypeError(f"expected Message, got {type(m).__name__}")
            target = m.role == "assistant"
            b.add([self.sp[f"<|{m.role}|>"]], False)
            for part in m.content:
                self._part(b, part, target, bidirectional=not target)
            b.add([self.sp["<|end_of_turn|>"]], target)
        if add_generation_prompt:
            b.add([self.sp["<|assistant|>"]], False)
            if reply_in_speech:
                b.add([self.sp["<|audio_start|>"]], False)
        return b.build()

    # ---- parse --------------------------------------------------------------------------------
    def parse(self, stream: Stream) -> list[Message]:
        """Stream -> messages (inverse of :meth:`serialise`; consecutive text parts merge).

        Raises ValueError naming the position of a malformed stream (e.g. an image with the wrong
        number of codes), so a bad generation is reported rather than silently mangled."""
        sp = self.sp
        toks = stream.tokens.tolist()
        role_of = {sp[f"<|{r}|>"]: r for r in ROLES}
        messages: list[Message] = []
        i, n = 0, len(toks)
        if n and toks[0] == sp["<|bos|>"]:
            i = 1
        while i < n:
            if toks[i] not in role_of:
                raise ValueError(f"position {i}: expected a role marker, got token {toks[i]}")
            msg = Message(role_of[toks[i]], [])
            i += 1
            i = self._parse_parts(toks, stream.audio, i, msg.content)
            messages.append(msg)
            if i < n and toks[i] == sp["<|end_of_turn|>"]:
                i += 1
        return messages

    def parse_parts(self, stream: Stream) -> list[Part]:
        """The parts of one message body (e.g. a generated reply, without role markers)."""
        parts: list[Part] = []
        self._parse_parts(stream.tokens.tolist(), stream.audio, 0, parts)
        return parts

    def _parse_parts(self, toks: list[int], audio: Tensor, i: int, parts: list[Part]) -> int:
        sp, v = self.sp, self.vocab
        stop = {sp["<|end_of_turn|>"], *(sp[f"<|{r}|>"] for r in ROLES)}
        text: list[int] = []

        def flush() -> None:
            if text:
                parts.append(Text(self.text.decode(text)))
                text.clear()

        n = len(toks)
        while i < n and toks[i] not in stop:
            t = toks[i]
            if t == sp["<|audio_start|>"]:
                flush()
                j = i + 1
                while j < n and toks[j] not in (sp["<|audio_end|>"], sp["<|interrupt|>"]) and audio[j, 0] >= 0:
                    j += 1
                codes = audio[i + 1 : j].T.contiguous()
                mono = [x for x in toks[i + 1 : j] if x != sp["<|text_pad|>"]]
                interrupted = j < n and toks[j] == sp["<|interrupt|>"]
                parts.append(Audio(codes, self.text.decode(mono) if mono else "", interrupted))
                i = j + 1 if j < n and toks[j] in (sp["<|audio_end|>"], sp["<|interrupt|>"]) else j
            elif t == sp["<|image_start|>"]:
                flush()
                h, w = v.image_grid
                codes = self._codes(toks, i + 1, h * w, v.image_offset, v.image_codes, "image")
                parts.append(Image(codes.view(h, w)))
                i = self._expect(toks, i + 1 + h * w, sp["<|image_end|>"], "<|image_end|>")
            elif t == sp["<|video_start|>"]:
                flush()
                h, w = v.video_grid
                steps, i = [], i + 1
                while i < n and toks[i] == sp["<|frame|>"]:
                    steps.append(self._codes(toks, i + 1, h * w, v.video_offset, v.video_codes, "video").view(h, w))
                    i += 1 + h * w
                if not steps:
                    raise ValueError(f"position {i}: a video needs at least one <|frame|>")
                parts.append(Video(torch.stack(steps)))
                i = self._expect(toks, i, sp["<|video_end|>"], "<|video_end|>")
            else:
                if t >= v.text_size:
                    raise ValueError(f"position {i}: image/video code {t} outside an image or video")
                text.append(t)
                i += 1
        flush()
        return i

    @staticmethod
    def _codes(toks: list[int], start: int, count: int, offset: int, size: int, what: str) -> Tensor:
        codes = torch.tensor(toks[start : start + count], dtype=torch.long) - offset
        if codes.numel() != count or bool(((codes < 0) | (codes >= size)).any()):
            raise ValueError(f"position {start}: expected {count} {what} codes in [{offset}, {offset + size})")
        return codes

    @staticmethod
    def _expect(toks: list[int], i: int, token: int, name: str) -> int:
        if i >= len(toks) or toks[i] != token:
            raise ValueError(f"position {i}: expected {name}")
        return i + 1


def _check_codes(codes: Any, dims: int, what: str, size: int) -> Tensor:
    codes = torch.as_tensor(codes)
    if codes.dim() != dims or codes.dtype not in (torch.long, torch.int32, torch.int64):
        raise ValueError(f"{what} codes must be an integer tensor with {dims} dims, got {tuple(codes.shape)} {codes.dtype}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= size):
        raise ValueError(f"{what} codes must lie in [0, {size}); got [{int(codes.min())}, {int(codes.max())}]")
    return codes.long().cpu()
