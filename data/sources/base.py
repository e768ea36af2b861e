"""The one interface every corpus reader implements: list examples cheaply, decode them on demand.

A reader knows one on-disk layout. ``examples()`` walks it and yields :class:`Example` records (the
media file, its text, metadata) without decoding anything, so a builder can plan and split millions
of examples first; :func:`decode` then reads one example's media. Iterating a source yields decoded
``(media, text, metadata)`` triples:

* audio: ``[1, samples]`` float32 mono at ``MediaSpec.sample_rate`` Hz (omni.io.audio.load_audio,
  soundfile: WAV, FLAC, OGG, MP3);
* image: ``[3, S, S]`` float in [0, 1], shorter side resized to ``MediaSpec.image_size``, centre crop;
* video: ``[T, 3, S, S]`` float in [0, 1] at ``MediaSpec.fps`` Hz (PyAV for mp4/webm/...).

Bad files never stop a build: a missing file, a transcript without audio (or audio without a
transcript), an unparsable line, an undecodable or over-long file is skipped and counted under its
reason in ``source.skipped`` (a Counter); ``source.report()`` says what was skipped, with examples.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from omni.io.audio import AudioError, load_audio
from omni.tokenizers.image import load_image
from omni.tokenizers.video import load_video

Tensor = torch.Tensor
AUDIO, IMAGE, VIDEO = "audio", "image", "video"


@dataclass
class Example:
    """One listed example: ``modality`` (audio / image / video), the media ``path``, its ``text``
    (transcript or caption) and ``meta`` (speaker, id, other captions ...: JSON-serialisable)."""

    modality: str
    path: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class MediaSpec:
    """How media are decoded: audio rate (Hz), image / video side (px), video rate (Hz), and the
    longest audio or video kept (s; longer ones are skipped as bad)."""

    sample_rate: int = 16000
    image_size: int = 256
    fps: float = 8.0
    max_seconds: float = 30.0


class Source:
    """Base class of the readers. Subclasses set ``name`` and ``modality`` and implement
    :meth:`examples`; they call :meth:`skip` for every bad entry they meet while listing."""

    name = "source"
    modality = AUDIO

    def __init__(self, root: str | Path, split: Optional[str] = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.name}: {self.root} is not a folder; point the source at the corpus root")
        self.split = split
        self.skipped: Counter = Counter()
        self._skipped_examples: dict[str, list[str]] = {}

    def examples(self) -> Iterator[Example]:
        """Every example of the layout, in a deterministic order, without decoding media."""
        raise NotImplementedError

    def skip(self, reason: str, what: Any) -> None:
        """Count one bad entry (``reason``: a short phrase; ``what``: the file or line)."""
        self.skipped[reason] += 1
        seen = self._skipped_examples.setdefault(reason, [])
        if len(seen) < 3:
            seen.append(str(what))

    def decode(self, ex: Example, spec: MediaSpec) -> Optional[Tensor]:
        """The example's media as a tensor (module docstring), or None (counted) if the file is bad."""
        try:
            return decode(ex, spec)
        except (ValueError, OSError, RuntimeError) as e:
            self.skip(f"undecodable {ex.modality}", e)
            return None

    def __iter__(self) -> Iterator[tuple[Tensor, str, dict[str, Any]]]:
        return self.read(MediaSpec())

    def read(self, spec: MediaSpec) -> Iterator[tuple[Tensor, str, dict[str, Any]]]:
        """Decoded ``(media, text, meta)`` of every good example; bad ones are counted and skipped."""
        for ex in self.examples():
            media = self.decode(ex, spec)
            if media is not None:
                yield media, ex.text, ex.meta

    def report(self) -> str:
        """One line per skip reason with its count and up to three examples ("" when nothing was skipped)."""
        return "\n".join(f"{self.name}: skipped {n} ({reason}), e.g. {'; '.join(self._skipped_examples.get(reason, []))}"
                         for reason, n in sorted(self.skipped.items()))


def decode(ex: Example, spec: MediaSpec) -> Tensor:
    """Decode ``ex``'s media per ``spec`` (see the module docstring for shapes). Raises ValueError
    (AudioError, omni.io.video.VideoError) for unreadable or over-long files."""
    if ex.modality == AUDIO:
        return load_audio(ex.path, spec.sample_rate, max_seconds=spec.max_seconds)
    if ex.modality == IMAGE:
        return load_image(ex.path, spec.image_size)
    if ex.modality == VIDEO:
        return load_video(ex.path, spec.image_size, max_frames=max(1, int(spec.max_seconds * spec.fps)), fps=spec.fps)
    raise ValueError(f"unknown modality {ex.modality!r}")


def read_jsonl_captions(source: Source, file: Path, modality: str) -> Iterator[Example]:
    """Examples of a ``captions.jsonl`` (one ``{"file": relative path, "text": caption, ...}`` per line;
    ``image`` / ``video`` / ``path`` are accepted for ``file`` and ``caption`` for ``text``; other keys
    become metadata). Shared by the image-text and video folders."""
    if not file.is_file():
        raise FileNotFoundError(f"{source.name}: {file} is missing; it lists each file with its caption, "
                                'one JSON object per line: {"file": "a.jpg", "text": "a cat on a mat."}')
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            name = next(rec[k] for k in ("file", modality, "path") if k in rec)
            text = next(rec[k] for k in ("text", "caption") if k in rec)
        except (json.JSONDecodeError, StopIteration, TypeError):
            source.skip("unparsable captions.jsonl line", f"{file}:{n}")
            continue
        path = file.parent / name
        if not path.is_file():
            source.skip(f"missing {modality} file", path)
            continue
        meta = {k: v for k, v in rec.items() if k not in ("file", modality, "path", "text", "caption")}
        yield Example(modality, str(path), str(text).strip(), {"id": Path(name).stem, **meta})
