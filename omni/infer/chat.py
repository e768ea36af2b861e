"""Talk to a trained omni model: load once, then any-to-any ``chat`` and streamed speech ``stream``.

    from omni.infer.chat import OmniChat
    bot = OmniChat.load("runs/omni-tiny")
    reply = bot.chat([{"role": "user", "content": [{"type": "image", "path": "cat.png"},
                                                   {"type": "text", "text": "Describe the image."}]}])
    reply.text, reply.audio, reply.images
    for wav in bot.stream(chunks):   # chunks: [samples] float tensors at bot.sample_rate (e.g. 80 ms)
        play(wav)

Command line (writes reply.txt, reply.wav when it speaks, image_N.png when it draws)::

    python -m omni.chat --checkpoint runs/omni-tiny --audio question.wav --out out/
    python -m omni.chat --checkpoint runs/omni-tiny --image x.png --text "Describe the image." --out out/
    python -m omni.chat --checkpoint runs/omni-tiny --video clip.mp4 --text "What happens in the video?" --out out/
    python -m omni.chat --checkpoint runs/omni-tiny --text "Draw a cup of coffee on a saucer." --out out/
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import torch
from PIL import Image as PILImage

from omni.config import Config, ServingConfig
from omni.conversation import Audio, ConversationFormat, Image, Message, OmniVocab, Part, Text, Video
from omni.infer.guardrail import VoiceGuardrail, load_reference
from omni.infer.load import load_checkpoint, omni_model_shape
from omni.infer.reply import Reply, generate_replies
from omni.infer.session import SpeechSession, TickOutput
from omni.infer.vad import VoiceActivity
from omni.io.audio import check_finite, load_audio, save_audio
from omni.model.omni import OmniModel
from omni.model.sampling import SamplingConfig
from omni.tokenizers.base import load_tokenizer
from omni.tokenizers.image import load_image
from omni.tokenizers.video import load_video
from omni.train.checkpoint import resolve_checkpoint

Tensor = torch.Tensor
SILENCE_PEAK = 1e-3  # audio whose peak amplitude stays below this is treated as silence


@dataclass
class ChatReply:
    """text: the reply's text (text parts, else the spoken monologue); audio: [samples] at
    sample_rate or None; images: [3, H, W] tensors in [0, 1]; voice_stop_s: seconds of speech kept
    when the voice guardrail stopped the reply (``audio`` ends there; the text is whole), else None."""

    text: str
    audio: Optional[Tensor]
    images: list[Tensor] = field(default_factory=list)
    reply: Optional[Reply] = None
    voice_stop_s: Optional[float] = None


class OmniChat:
    """A trained omni model with its frozen tokenizers, loaded once. ``compile=True``: replies and
    sessions decode through the fast path (omni/infer/compile.py). ``serving`` (VAD threshold, end of
    turn, barge-in, reply length, voice guardrail) is chosen here, at serving time: checkpoints do not
    carry it. The voice guardrail (omni/infer/guardrail.py) is on unless ``serving.voice_guardrail``
    is off: spoken replies, offline and streamed, stop where their voice leaves the preset one.
    ``voice_reference`` [256]: the guardrail's preset-voice embedding through ``codec``
    (:func:`omni.infer.guardrail.load_reference` of its folder; None: the clean-speech one)."""

    def __init__(self, model: Any, fmt: ConversationFormat, codec: Any, image_tok: Any, video_tok: Any, cfg: Any,
                 compile: bool = False, serving: ServingConfig = ServingConfig(),
                 voice_reference: Optional[Tensor] = None) -> None:
        self.model, self.fmt, self.codec, self.image_tok, self.video_tok, self.cfg = model, fmt, codec, image_tok, video_tok, cfg
        self.compile, self.serving = compile, serving
        self.voice_reference = load_reference() if voice_reference is None else voice_reference

    @classmethod
    def load(cls, checkpoint: Union[str, Path], device: str = "cpu", compile: bool = False,
             serving: ServingConfig = ServingConfig()) -> "OmniChat":
        """From a run folder or step folder written by ``train.py --config configs/omni-*.yaml``."""
        step = resolve_checkpoint(checkpoint)
        folder = step / "tokenizers"

        toks: dict[str, Any] = {}  # the checkpoint's tokenizers and vocabulary, read once by build()

        def build(cfg: Config) -> OmniModel:  # called once the checkpoint's task is known to be omni
            if not (step / "vocab.json").is_file() or not folder.is_dir():
                raise FileNotFoundError(f"{step} lacks vocab.json / tokenizers/: was it written by the omni task?")
            toks.update({n: load_tokenizer(folder / n) for n in ("text", "codec", "image", "video")})
            toks["vocab"] = OmniVocab.from_dict(json.loads((step / "vocab.json").read_text()))
            return omni_model_shape(cfg, toks["vocab"], toks["codec"].quantizer.codebooks)

        model, cfg, step = load_checkpoint(step, build, task="omni", device=device)
        for n in ("codec", "image", "video"):
            toks[n] = toks[n].to(device).eval()
        return cls(model, ConversationFormat(toks["text"], toks["vocab"]), toks["codec"], toks["image"], toks["video"], cfg,
                   compile, serving, load_reference(folder / "codec"))

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def device(self) -> torch.device:
        return self.model.decoder.tok_embeddings.weight.device

    # ---- inputs -> parts ----------------------------------------------------------------------
    def audio_part(self, audio: Union[str, Path, Tensor]) -> Audio:
        """A wav path or waveform [samples] / [1, samples] at ``sample_rate`` -> codec codes."""
        wav = load_audio(audio, self.sample_rate) if isinstance(audio, (str, Path)) else torch.as_tensor(audio).float()
        wav = wav.reshape(1, -1)
        if wav.shape[-1] == 0:
            raise ValueError("the audio is empty")
        check_finite(wav)
        if float(wav.abs().max()) < SILENCE_PEAK:
            raise ValueError(f"the audio is silent (peak amplitude below {SILENCE_PEAK}): there is nothing to answer")
        with torch.no_grad():
            codes = self.codec.encode(self.codec.pad_to_hop(wav)[None].to(next(self.codec.parameters()).device))
        return Audio(codes[0].cpu())

    def image_part(self, image: Any) -> Image:
        """A path, PIL image or tensor [3, H, W] in [0, 1] -> image codes."""
        size = self.image_tok.cfg.image_size
        px = image if isinstance(image, Tensor) else load_image(image, size)
        if px.dim() != 3 or px.shape[0] != 3:
            raise ValueError(f"an image tensor must be [3, H, W] in [0, 1], got {list(px.shape)}")
        if px.shape[-2:] != (size, size):
            px = torch.nn.functional.interpolate(px[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        with torch.no_grad():
            return Image(self.image_tok.encode(px[None].to(self.device).clamp(0, 1))[0].cpu())

    def video_part(self, video: Any) -> Video:
        """A video file (.mp4, .webm, ... read at the tokenizer's fps) / frame folder / .npy / animated GIF
        path, or frames [T, 3, H, W] -> video codes (frames are trimmed to the tokenizer's 1 + r*n)."""
        size, r = self.video_tok.cfg.image_size, self.video_tok.cfg.temporal_stride
        frames = video if isinstance(video, Tensor) else load_video(video, size, fps=self.video_tok.cfg.fps)
        if frames.dim() != 4 or frames.shape[1] != 3 or frames.shape[0] < 1:
            raise ValueError(f"video frames must be [T, 3, H, W], got {list(frames.shape)}")
        if frames.shape[-2:] != (size, size):
            frames = torch.nn.functional.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False)
        frames = frames[: 1 + r * ((frames.shape[0] - 1) // r)]
        with torch.no_grad():
            return Video(self.video_tok.encode(frames[None].to(self.device))[0].cpu())

    def to_message(self, m: Union[Message, dict[str, Any]]) -> Message:
        """A Message, or ``{"role", "content": str | [{"type": "text"|"audio"|"image"|"video", ...}]}``
        where audio/image/video items carry ``path`` or raw data (``wav`` / ``image`` / ``frames``)."""
        if isinstance(m, Message):
            return m
        content = m.get("content", "")
        if isinstance(content, str):
            return Message(m.get("role", "user"), [Text(content)])
        parts: list[Part] = []
        for item in content:
            kind = item.get("type")
            if kind == "text":
                parts.append(Text(item["text"]))
            elif kind == "audio":
                parts.append(self.audio_part(item.get("path", item.get("wav"))))
            elif kind == "image":
                parts.append(self.image_part(item.get("path", item.get("image"))))
            elif kind == "video":
                parts.append(self.video_part(item.get("path", item.get("frames"))))
            else:
                raise ValueError(f"unknown content type {kind!r}; use text, audio, image or video")
        return Message(m.get("role", "user"), parts)

    # ---- generation ---------------------------------------------------------------------------
    def chat(self, messages: list[Union[Message, dict[str, Any]]], *, reply_in_speech: Optional[bool] = None,
             max_new_tokens: int = 512, sampling: SamplingConfig = SamplingConfig(), seed: int = 0) -> ChatReply:
        """Any-to-any: the assistant's reply to ``messages``. ``reply_in_speech``: True forces speech,
        False lets the model choose; default: speech when the last user message is audio only."""
        return self.chat_many([messages], reply_in_speech=reply_in_speech, max_new_tokens=max_new_tokens,
                              sampling=sampling, seed=seed)[0]

    def chat_many(self, conversations: Sequence[list[Union[Message, dict[str, Any]]]], *,
                  reply_in_speech: Optional[bool] = None, max_new_tokens: int = 512,
                  sampling: SamplingConfig = SamplingConfig(), seed: int = 0, batch_size: int = 32) -> list[ChatReply]:
        """:meth:`chat` for each conversation, ``batch_size`` at a time in one batch of decoding
        (:func:`omni.infer.reply.generate_replies`: with greedy sampling, the default, each reply is
        the one :meth:`chat` gives alone). ``reply_in_speech`` as in :meth:`chat`, per conversation."""
        convs = [[self.to_message(m) for m in c] for c in conversations]
        if any(not msgs or msgs[-1].role != "user" for msgs in convs):
            raise ValueError("the conversation must end with a user message")
        speech = [all(isinstance(p, Audio) for p in msgs[-1].content) if reply_in_speech is None else reply_in_speech
                  for msgs in convs]
        gen = torch.Generator(device=self.device).manual_seed(seed)
        replies: list[Optional[Reply]] = [None] * len(convs)
        for mode in (False, True):
            rows = [i for i, s in enumerate(speech) if s == mode]
            for k in range(0, len(rows), batch_size):
                chunk = rows[k : k + batch_size]
                out = generate_replies(self.model, self.fmt, [convs[i] for i in chunk], reply_in_speech=mode,
                                       max_new_tokens=max_new_tokens, sampling=sampling, generator=gen, compile=self.compile)
                for i, r in zip(chunk, out):
                    replies[i] = r
        guard = VoiceGuardrail.from_serving(self.serving, self.sample_rate, self.voice_reference) if any(speech) else None
        return [self._chat_reply(r, guard) for r in replies]

    def _chat_reply(self, reply: Reply, guard: Optional[VoiceGuardrail]) -> ChatReply:
        """A generated reply's text, decoded images and speech (cut where the voice guardrail stops it)."""
        texts, images, audio = [], [], []
        for p in reply.parts:
            if isinstance(p, Text):
                texts.append(p.text)
            elif isinstance(p, Audio) and p.codes.shape[1]:
                audio.append(p.codes)
                texts.append(p.text)
            elif isinstance(p, Image):
                with torch.no_grad():
                    images.append(self.image_tok.decode(p.codes[None].to(self.device))[0].cpu())
        wav, stop_s = None, None
        if audio:
            with torch.no_grad():
                wav = self.codec.decode(torch.cat(audio, 1)[None].to(next(self.codec.parameters()).device))[0, 0].cpu()
            stop = guard.first_stop(wav, self.codec.hop_length) if guard is not None else None
            if stop is not None:  # checked frame by frame as a stream would be: speech up to the stop
                wav, stop_s = wav[:stop], stop / self.sample_rate
        return ChatReply(" ".join(t.strip() for t in texts if t.strip()), wav, images, reply, stop_s)

    def session(self, batch_size: int = 1, vad: bool = True, sampling: SamplingConfig = SamplingConfig(),
                seed: int = 0, serving: Optional[ServingConfig] = None) -> SpeechSession:
        """A streaming speech-to-speech session (use ``with``); ``vad`` ends turns and detects barge-in;
        ``serving``: this session's knobs (default: the ones the model was loaded with)."""
        gen = torch.Generator(device=self.device).manual_seed(seed)
        return SpeechSession(self.model, self.codec, self.fmt, batch_size, vad=VoiceActivity(self.sample_rate) if vad else None,
                             sampling=sampling, generator=gen, serving=serving or self.serving, compile=self.compile,
                             voice_reference=self.voice_reference)

    def stream(self, chunks: Iterable[Tensor], vad: bool = True, **kw: Any) -> Iterator[Tensor]:
        """One spoken turn: feed input chunks ([samples] at ``sample_rate``, any length, e.g. 80 ms) as
        they arrive; yields the reply as waveform frames [hop] as soon as each is decoded, then the
        codec's held-back end of the reply ([n] samples, ``TickOutput.tail``). The turn ends by VAD
        or, at the latest, when ``chunks`` is exhausted. A reply the voice guardrail stops yields no
        more audio."""
        with self.session(1, vad=vad, **kw) as s:
            replied = False
            for chunk in chunks:
                for out in s.feed(torch.as_tensor(chunk).float().reshape(1, 1, -1)):
                    replied |= any(name == "turn_end" for _, name in out.events)
                    yield from _played(out)
            if not replied:
                for out in s.feed(torch.zeros(1, 1, 0), end_turn=True):
                    yield from _played(out)
            for out in s.reply():
                yield from _played(out)


def _played(out: TickOutput) -> Iterator[Tensor]:
    """What a one-row session's tick gives the listener: its frame if speaking, then any held-back end."""
    if out.speaking[0]:
        yield out.audio[0, 0]
    if (0, "speech_end") in out.events:
        yield out.tail[0, 0]


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m omni.chat", description="Ask a trained omni model anything (text, speech, image, video).",
                                epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run folder or step folder (runs/omni-tiny)")
    p.add_argument("--text", default=None, help="text of the user's message")
    p.add_argument("--audio", default=None, help="a wav file: the user speaks")
    p.add_argument("--image", default=None, help="an image file (PNG/JPEG)")
    p.add_argument("--video", default=None, help="a video file (.mp4, .webm, ...), a frame folder, .npy [T,H,W,3] uint8 or animated GIF/WebP")
    p.add_argument("--out", required=True, help="folder for reply.txt, reply.wav and image_N.png")
    p.add_argument("--speech", choices=("auto", "yes", "no"), default="auto",
                   help="reply in speech: yes forces it, no lets the model choose, auto = yes for audio-only input")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    content = [{"type": k, "path": v} for k, v in (("image", args.image), ("video", args.video)) if v]
    content += [{"type": "text", "text": args.text}] if args.text else []
    content += [{"type": "audio", "path": args.audio}] if args.audio else []
    if not content:
        p.error("give at least one of --text, --audio, --image, --video")
    try:
        bot = OmniChat.load(args.checkpoint, args.device)
        speech = {"auto": None, "yes": True, "no": False}[args.speech]
        reply = bot.chat([{"role": "user", "content": content}], reply_in_speech=speech, max_new_tokens=args.max_new_tokens,
                         sampling=SamplingConfig(temperature=args.temperature), seed=args.seed)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        sys.exit(f"error: {e}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "reply.txt").write_text(reply.text + "\n")
    print(f"reply: {reply.text}")
    if reply.audio is not None:
        save_audio(out / "reply.wav", reply.audio[None], bot.sample_rate)
        print(f"speech: {out / 'reply.wav'} ({reply.audio.shape[-1] / bot.sample_rate:.2f} s)")
    for i, img in enumerate(reply.images):
        PILImage.fromarray((img.permute(1, 2, 0) * 255).round().byte().numpy()).save(out / f"image_{i}.png")
        print(f"image: {out / f'image_{i}.png'}")
    if reply.voice_stop_s is not None:
        print(f"note: the voice guardrail stopped the spoken reply after {reply.voice_stop_s:.2f} s "
              "(its voice left the preset one); reply.txt holds the whole text", file=sys.stderr)
    if reply.reply is not None and reply.reply.truncated:
        print("note: the reply was cut at --max-new-tokens or the model's context", file=sys.stderr)


if __name__ == "__main__":
    main()
