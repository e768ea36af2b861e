"""Readers for the corpus layouts researchers already have on disk (installed as ``omni.data.sources``).

One module per layout, one interface (:class:`~omni.data.sources.base.Source`, base.py):

    from omni.data.sources import open_source
    src = open_source("librispeech=/data/LibriSpeech")          # NAME[:SPLIT]=PATH
    for wav, text, meta in src:                                   # decoded; bad files skipped
        ...
    print(src.report())                                           # what was skipped and why

| name | layout |
|---|---|
| ``librispeech`` | ``SPLIT/SPEAKER/CHAPTER/*.flac`` + ``SPEAKER-CHAPTER.trans.txt`` |
| ``libritts`` (also LibriTTS-R) | ``SPLIT/SPEAKER/CHAPTER/*.wav`` + ``*.normalized.txt`` |
| ``vctk`` (0.92) | ``wav48_silence_trimmed/pXXX/*_mic1.flac`` + ``txt/pXXX/*.txt`` |
| ``ljspeech`` | ``metadata.csv`` (pipe-separated) + ``wavs/`` |
| ``commonvoice`` | ``clips/*.mp3`` + ``validated.tsv`` / ``train.tsv`` / ... |
| ``coco`` | ``annotations/captions_train2017.json`` + ``train2017/`` |
| ``images`` | image files + ``captions.jsonl`` |
| ``videos`` | ``*.mp4`` / ``*.webm`` + ``captions.jsonl`` |
"""
from __future__ import annotations

from pathlib import Path

from omni.data.sources.base import AUDIO, IMAGE, VIDEO, Example, MediaSpec, Source, decode
from omni.data.sources.coco import Coco
from omni.data.sources.commonvoice import CommonVoice
from omni.data.sources.folders import ImageTextFolder, VideoFolder
from omni.data.sources.librispeech import LibriSpeech
from omni.data.sources.libritts import LibriTTS
from omni.data.sources.ljspeech import LJSpeech
from omni.data.sources.vctk import VCTK

SOURCES: dict[str, type[Source]] = {cls.name: cls for cls in (
    LibriSpeech, LibriTTS, VCTK, LJSpeech, CommonVoice, Coco, ImageTextFolder, VideoFolder)}

__all__ = ["AUDIO", "IMAGE", "VIDEO", "Example", "MediaSpec", "Source", "SOURCES", "decode", "open_source", "open_sources",
           "parse_source"]


def parse_source(spec: str) -> tuple[str, str | None, Path]:
    """``NAME[:SPLIT]=PATH`` -> (name, split or None, path). Raises ValueError naming the known readers."""
    name, sep, path = spec.partition("=")
    if not sep or not path:
        raise ValueError(f"source {spec!r}: write NAME=PATH or NAME:SPLIT=PATH, e.g. librispeech=/data/LibriSpeech")
    name, _, split = name.partition(":")
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; known: {', '.join(sorted(SOURCES))}")
    return name, split or None, Path(path).expanduser()


def open_source(spec: str) -> Source:
    """The reader that ``NAME[:SPLIT]=PATH`` names (see the table above)."""
    name, split, path = parse_source(spec)
    return SOURCES[name](path, split)


def open_sources(specs: list[str], modality: str, out: Path) -> list[Source]:
    """The readers of ``specs`` (``NAME[:SPLIT]=PATH``) for a corpus builder that writes ``modality``
    (AUDIO, IMAGE or VIDEO) into ``out/train`` and ``out/val``: every source is checked before anything
    is written, then both folders are made. Raises ValueError naming a source of another modality."""
    sources = [open_source(spec) for spec in specs]
    for spec, src in zip(specs, sources):
        if src.modality != modality:
            raise ValueError(f"{spec}: {src.name} holds {src.modality}, not {modality}")
    for split in ("train", "val"):
        (out / split).mkdir(parents=True, exist_ok=True)
    return sources
