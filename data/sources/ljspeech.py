"""LJSpeech 1.1 (keithito.com/LJ-Speech-Dataset): ``metadata.csv`` with ``ID|transcript|normalized
transcript`` per line (pipe-separated, no header, quotes are literal) and ``wavs/ID.wav`` (22.05 kHz,
one speaker). The normalised transcript is used (numbers spelt out), the raw one when it is empty."""
from __future__ import annotations

from typing import Iterator

from omni.data.sources.base import AUDIO, Example, Source


class LJSpeech(Source):
    name, modality = "ljspeech", AUDIO

    def examples(self) -> Iterator[Example]:
        meta = self.root / "metadata.csv"
        if not meta.is_file():
            raise FileNotFoundError(f"{meta} is missing; is {self.root} the LJSpeech-1.1 folder?")
        # Split on "|" by hand: the transcripts hold unbalanced quotes that a csv reader would join.
        for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
            fields = line.split("|")
            if len(fields) < 2 or not fields[0]:
                self.skip("unparsable metadata.csv line", f"{meta}:{n}")
                continue
            text = (fields[2] if len(fields) > 2 and fields[2].strip() else fields[1]).strip()
            wav = self.root / "wavs" / f"{fields[0]}.wav"
            if not wav.is_file():
                self.skip("transcript without audio", wav)
                continue
            if not text:
                self.skip("empty transcript", f"{meta}:{n}")
                continue
            yield Example(AUDIO, str(wav), text, {"id": fields[0], "speaker": "LJ", "raw_text": fields[1]})
