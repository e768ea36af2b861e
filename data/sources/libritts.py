"""LibriTTS and LibriTTS-R (openslr.org/60, /141): ``[LibriTTS/]SPLIT/SPEAKER/CHAPTER/UTT.wav`` (24 kHz)
beside ``UTT.normalized.txt`` (the normalised transcript; ``UTT.original.txt`` is the book text)."""
from __future__ import annotations

from typing import Iterator

from omni.data.sources.base import AUDIO, Example, Source
from omni.data.sources.librispeech import chapter_folders


class LibriTTS(Source):
    name, modality = "libritts", AUDIO

    def examples(self) -> Iterator[Example]:
        wavs = chapter_folders(self.root, self.split, "*.wav")
        if not wavs:
            raise FileNotFoundError(f"{self.root}: no SPEAKER/CHAPTER/*.wav found; is this a LibriTTS folder?")
        for wav in wavs:
            txt = wav.with_suffix(".normalized.txt")
            if not txt.is_file():
                self.skip("audio without transcript", wav)
                continue
            text = " ".join(txt.read_text(encoding="utf-8").split())
            if not text:
                self.skip("empty transcript", txt)
                continue
            speaker, chapter = wav.stem.split("_")[:2]
            yield Example(AUDIO, str(wav), text, {"id": wav.stem, "speaker": speaker, "chapter": chapter})
