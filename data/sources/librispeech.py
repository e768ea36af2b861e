"""LibriSpeech (openslr.org/12): ``[LibriSpeech/]SPLIT/SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac`` with one
``SPEAKER-CHAPTER.trans.txt`` per chapter (``UTTERANCE-ID TRANSCRIPT`` per line, upper case, no
punctuation). Transcripts are given in sentence case ("HELLO WORLD" -> "Hello world"); the original is
in ``meta["raw_text"]``."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from omni.data.sources.base import AUDIO, Example, Source


def chapter_folders(root: Path, split: str | None, pattern: str) -> list[Path]:
    """Files matching ``pattern`` three levels down (SPEAKER/CHAPTER/file) of every split folder of
    ``root`` (or of ``root/split``; ``root`` may itself be a split folder), sorted."""
    base = root / split if split else root
    if not base.is_dir():
        raise FileNotFoundError(f"{base} does not exist; splits under {root}: {sorted(p.name for p in root.iterdir() if p.is_dir())}")
    files = sorted(base.glob(f"*/*/{pattern}")) or sorted(base.glob(f"*/*/*/{pattern}"))
    return files


class LibriSpeech(Source):
    name, modality = "librispeech", AUDIO

    def examples(self) -> Iterator[Example]:
        transcripts = chapter_folders(self.root, self.split, "*.trans.txt")
        if not transcripts:
            raise FileNotFoundError(f"{self.root}: no SPEAKER/CHAPTER/*.trans.txt found; is this a LibriSpeech folder?")
        for trans in transcripts:
            listed = set()
            for n, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
                utt, _, raw = line.strip().partition(" ")
                if not utt or not raw:
                    self.skip("unparsable transcript line", f"{trans}:{n}")
                    continue
                listed.add(utt)
                audio = trans.parent / f"{utt}.flac"
                if not audio.is_file():
                    self.skip("transcript without audio", audio)
                    continue
                speaker, chapter = utt.split("-")[:2]
                yield Example(AUDIO, str(audio), raw.capitalize(),
                              {"id": utt, "speaker": speaker, "chapter": chapter, "raw_text": raw})
            for audio in sorted(trans.parent.glob("*.flac")):
                if audio.stem not in listed:
                    self.skip("audio without transcript", audio)
