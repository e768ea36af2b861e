"""VCTK 0.92 (datashare.ed.ac.uk/handle/10283/3443): ``wav48_silence_trimmed/pXXX/pXXX_NNN_mic1.flac``
(48 kHz; ``_mic2`` is the second microphone) and ``txt/pXXX/pXXX_NNN.txt``. Speakers without
transcripts (p315) and recordings without a text file are skipped and counted."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

from omni.data.sources.base import AUDIO, Example, Source


class VCTK(Source):
    """``split`` picks the microphone: ``mic1`` (default) or ``mic2``."""

    name, modality = "vctk", AUDIO

    def __init__(self, root: str | Path, split: Optional[str] = None) -> None:
        super().__init__(root, split)
        if (split or "mic1") not in ("mic1", "mic2"):
            raise ValueError(f"vctk: the split names the microphone, mic1 or mic2, not {split!r}")

    def examples(self) -> Iterator[Example]:
        audio_dir, text_dir = self.root / "wav48_silence_trimmed", self.root / "txt"
        if not audio_dir.is_dir():
            raise FileNotFoundError(f"{audio_dir} is missing; is {self.root} the VCTK 0.92 folder?")
        mic = self.split or "mic1"
        for flac in sorted(audio_dir.glob(f"p*/*_{mic}.flac")) + sorted(audio_dir.glob(f"s*/*_{mic}.flac")):
            utt = flac.name.removesuffix(f"_{mic}.flac")
            txt = text_dir / flac.parent.name / f"{utt}.txt"
            if not txt.is_file():
                self.skip("audio without transcript", flac)
                continue
            text = " ".join(txt.read_text(encoding="utf-8", errors="replace").split())
            if not text:
                self.skip("empty transcript", txt)
                continue
            yield Example(AUDIO, str(flac), text, {"id": utt, "speaker": flac.parent.name, "mic": mic})
