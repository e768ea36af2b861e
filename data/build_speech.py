"""Build the speech corpus: many synthetic espeak-ng speakers for training, real clips for evaluation.

Synthetic speech (train + val) comes from libespeak-ng, shipped with its voice data by the PyPI
package ``espeakng-loader`` (no system package needed) and driven here through ctypes. A "speaker"
is an English accent (en-US, RP, Scottish, Caribbean, ...) x a voice variant (m1..m7, f1..f5,
named variants) x speaking rate x pitch x pitch range; val uses speakers never seen in train.
Sentences come from Shakespeare (the text corpus source of data/build_text.py), Debian fortunes when
installed, and a small built-in generator of everyday sentences (always available, used by tests).

Real recordings — Debian ``pocketsphinx-testdata`` (cards, LibriVox) and ``alsa-utils`` channel
announcements, when installed — are copied to ``real_eval/`` with their transcripts. They are for
evaluation only (eval/eval_tokenizers.py); the codec never trains on them.

Layout written under ``--out`` (default ``codec.data_path`` of the config)::

    train/000000.wav ...   val/000000.wav ...   real_eval/*.wav      (16-bit mono at codec.sample_rate)
    train.jsonl  val.jsonl  real_eval.jsonl                          ({"path", "text", "speaker", "seconds"})

    python data/build_speech.py --config configs/codec-tiny.yaml --minutes 30

The same layout from corpora on disk (data/sources/: LibriSpeech, LibriTTS, VCTK, LJSpeech, Common
Voice), resampled to ``codec.sample_rate``, every ``VAL_EVERY``-th utterance to val, bad files skipped
and reported (docs/data.md)::

    python data/build_speech.py --config configs/codec.yaml --from librispeech=/data/LibriSpeech --from vctk=/data/VCTK
"""
from __future__ import annotations

import argparse
import ctypes
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from tqdm import tqdm

from omni.config import load_config
from omni.data.sources import AUDIO, MediaSpec, open_source
from omni.io.audio import load_audio, resample, save_audio

ACCENTS = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc")
VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
    "Alex", "Andy", "Annie", "david", "edward", "grandma", "grandpa", "ian", "john", "linda", "max",
    "michel", "norbert", "paul", "quincy", "rob", "robert", "steph", "travis", "victor", "zac",
)
POCKETSPHINX_DATA = Path("/usr/share/pocketsphinx/test/data")
ALSA_SOUNDS = Path("/usr/share/sounds/alsa")


class Espeak:
    """libespeak-ng through ctypes, synchronous mode: ``synth(text, speaker) -> int16 samples``."""

    # espeak_PARAMETER values from speak_lib.h
    RATE, PITCH, RANGE = 1, 3, 4

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as e:
            raise RuntimeError("speech synthesis needs `pip install espeakng-loader`") from e
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        # AUDIO_OUTPUT_SYNCHRONOUS = 2: espeak_Synth returns after calling the callback with all samples
        self.sample_rate = self.lib.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.sample_rate})")
        self._chunks: list[np.ndarray] = []
        proto = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        self._callback = proto(self._collect)  # keep a reference: espeak calls it from C
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, n: int, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def synth(self, text: str, speaker: "Speaker") -> np.ndarray:
        """Samples (int16, at ``self.sample_rate``) of ``text`` spoken by ``speaker``."""
        if self.lib.espeak_SetVoiceByName(f"{speaker.accent}+{speaker.variant}".encode()) != 0:
            raise RuntimeError(f"espeak-ng has no voice {speaker.accent}+{speaker.variant}")
        self.lib.espeak_SetParameter(self.RATE, speaker.rate, 0)
        self.lib.espeak_SetParameter(self.PITCH, speaker.pitch, 0)
        self.lib.espeak_SetParameter(self.RANGE, speaker.pitch_range, 0)
        self._chunks = []
        data = text.encode("utf-8") + b"\0"
        # position 0, POS_CHARACTER, no end, espeakCHARS_UTF8
        if self.lib.espeak_Synth(data, len(data), 0, 1, 0, 1, None, None) != 0:
            raise RuntimeError(f"espeak_Synth failed on {text!r}")
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


@dataclass(frozen=True)
class Speaker:
    accent: str
    variant: str
    rate: int  # words per minute
    pitch: int  # 0..100
    pitch_range: int  # 0..100

    @property
    def name(self) -> str:
        return f"{self.accent}+{self.variant}@{self.rate}/{self.pitch}/{self.pitch_range}"


def make_speakers(n: int, seed: int) -> list[Speaker]:
    """``n`` distinct speakers drawn from accents x variants x prosody."""
    rng = random.Random(seed)
    pairs = [(a, v) for a in ACCENTS for v in VARIANTS]
    rng.shuffle(pairs)
    return [
        Speaker(a, v, rng.randint(130, 210), rng.randint(25, 75), rng.randint(20, 80))
        for a, v in (pairs[i % len(pairs)] for i in range(n))
    ]


_SUBJECTS = ("the old farmer", "my sister", "a small boy", "the teacher", "our neighbour", "the doctor",
             "a tired driver", "the children", "his friend", "the captain", "every student", "a quiet woman")
_VERBS = ("found", "painted", "carried", "opened", "sold", "cleaned", "forgot", "watched", "bought", "fixed",
          "borrowed", "described")
_OBJECTS = ("a red bicycle", "the kitchen window", "seven green apples", "an old map", "the heavy box",
            "a letter from home", "the broken clock", "two warm blankets", "the garden gate", "a silver key")
_PLACES = ("near the river", "after dinner", "in the morning", "before the storm", "at the station",
           "on Tuesday", "under the bridge", "behind the school", "during the winter", "next to the market")


def generated_sentences(n: int, seed: int) -> Iterator[str]:
    """Everyday sentences from a small grammar (always available, no files needed)."""
    rng = random.Random(seed)
    for _ in range(n):
        kind = rng.random()
        s, v, o, p = rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS), rng.choice(_PLACES)
        if kind < 0.5:
            yield f"{s.capitalize()} {v} {o} {p}."
        elif kind < 0.75:
            yield f"Did {s} really say that {rng.randint(2, 99)} people {v} {o}?"
        else:
            yield f"{p.capitalize()}, {s} {v} {o} and then went home."


def book_sentences() -> Iterator[str]:
    """Sentences of 4-30 words from Shakespeare and Debian fortunes (whatever is available)."""
    from omni.data.build_text import fortune_docs, shakespeare_docs

    for docs in (shakespeare_docs(), fortune_docs()):
        for doc in docs:
            for sent in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                if 4 <= len(sent.split()) <= 30 and re.search(r"[A-Za-z]", sent):
                    yield sent


def sentence_pool(source: str, n: int, seed: int) -> list[str]:
    """``n`` sentences from ``source`` ("generated" or "books" = books topped up with generated)."""
    pool: list[str] = []
    if source == "books":
        pool = list(book_sentences())
        random.Random(seed).shuffle(pool)
        pool = pool[:n]
    elif source != "generated":
        raise ValueError(f"unknown sentence source {source!r}; use 'books' or 'generated'")
    pool += generated_sentences(n - len(pool), seed)
    return pool


def real_eval_clips() -> list[tuple[Path, str]]:
    """(wav path, transcript) of the real recordings installed on this machine (maybe none)."""
    clips = []
    for sub, listing in (("cards", "cards/cards.transcription"), ("librivox", "librivox/transcription")):
        path = POCKETSPHINX_DATA / listing
        if path.exists():
            for line in path.read_text().splitlines():
                m = re.match(r"<s>(.*)</s>\s*\((\S+)\)", line.strip())
                if m and (POCKETSPHINX_DATA / sub / f"{m.group(2)}.wav").exists():
                    clips.append((POCKETSPHINX_DATA / sub / f"{m.group(2)}.wav", " ".join(m.group(1).split())))
    for wav in sorted(ALSA_SOUNDS.glob("*.wav")) if ALSA_SOUNDS.exists() else []:
        if wav.stem != "Noise":  # "Front_Left.wav" says "front left"
            clips.append((wav, wav.stem.replace("_", " ").lower()))
    return clips


def write_split(espeak: Espeak, out: Path, split: str, sentences: list[str], speakers: list[Speaker],
                sample_rate: int, seed: int) -> float:
    """Synthesise one split; returns its duration in seconds."""
    rng = random.Random(seed)
    (out / split).mkdir(parents=True, exist_ok=True)
    total = 0.0
    with open(out / f"{split}.jsonl", "w") as manifest:
        for i, text in enumerate(tqdm(sentences, desc=f"speech {split}", unit="utt")):
            speaker = rng.choice(speakers)
            pcm = espeak.synth(text, speaker)
            if pcm.size == 0:
                continue
            wav = resample(torch.from_numpy(pcm.astype(np.float32) / 32768.0)[None], espeak.sample_rate, sample_rate)
            rel = f"{split}/{i:06d}.wav"
            save_audio(out / rel, wav, sample_rate)
            seconds = wav.shape[-1] / sample_rate
            total += seconds
            manifest.write(json.dumps({"path": rel, "text": text, "speaker": speaker.name, "seconds": round(seconds, 3)}) + "\n")
    return total


def build_speech_corpus(out: str | Path, sample_rate: int = 16_000, minutes: float = 30.0, val_fraction: float = 0.05,
                        speakers: int = 120, source: str = "books", seed: int = 0, real: bool = True) -> dict[str, float]:
    """Write the corpus (see module docstring); returns seconds per split and the real clip count
    (``real=False`` skips the real recordings)."""
    out = Path(out)
    espeak = Espeak()
    n_utts = max(4, int(minutes * 60 / 3.0))  # ~3 s per utterance
    sentences = sentence_pool(source, n_utts, seed)
    n_val = max(2, int(n_utts * val_fraction))
    people = make_speakers(speakers, seed)
    n_val_speakers = max(1, speakers // 10)
    stats = {
        "train_seconds": write_split(espeak, out, "train", sentences[n_val:], people[n_val_speakers:], sample_rate, seed),
        "val_seconds": write_split(espeak, out, "val", sentences[:n_val], people[:n_val_speakers], sample_rate, seed + 1),
    }
    clips = real_eval_clips() if real else []
    (out / "real_eval").mkdir(parents=True, exist_ok=True)
    with open(out / "real_eval.jsonl", "w") as manifest:
        for src, text in clips:
            wav = load_audio(src, sample_rate)
            rel = f"real_eval/{src.parent.name}_{src.stem}.wav"
            save_audio(out / rel, wav, sample_rate)
            manifest.write(json.dumps({"path": rel, "text": text, "speaker": src.parent.name,
                                       "seconds": round(wav.shape[-1] / sample_rate, 3)}) + "\n")
    stats["real_eval_clips"] = len(clips)
    (out / "info.json").write_text(json.dumps({"sample_rate": sample_rate, "speakers": speakers, "source": source, **stats}, indent=2))
    return stats


VAL_EVERY = 50


def build_from_sources(specs: list[str], out: str | Path, sample_rate: int) -> dict[str, float]:
    """Write the train/val layout of the module docstring from the speech sources ``specs``
    (``NAME[:SPLIT]=PATH``); returns seconds per split. Raises ValueError for a non-speech source."""
    out = Path(out)
    seconds, n = {"train_seconds": 0.0, "val_seconds": 0.0}, 0
    for split in ("train", "val"):
        (out / split).mkdir(parents=True, exist_ok=True)
    with open(out / "train.jsonl", "w") as train, open(out / "val.jsonl", "w") as val:
        for spec in specs:
            src = open_source(spec)
            if src.modality != AUDIO:
                raise ValueError(f"{spec}: {src.name} holds {src.modality}, not speech")
            for wav, text, meta in tqdm(src.read(MediaSpec(sample_rate=sample_rate)), desc=f"speech from {src.name}", unit="utt"):
                split = "val" if n % VAL_EVERY == VAL_EVERY - 1 else "train"
                rel = f"{split}/{n:07d}.wav"
                save_audio(out / rel, wav, sample_rate)
                seconds[f"{split}_seconds"] += wav.shape[-1] / sample_rate
                (val if split == "val" else train).write(json.dumps(
                    {"path": rel, "text": text, "speaker": f"{src.name}:{meta.get('speaker', '')}",
                     "seconds": round(wav.shape[-1] / sample_rate, 3)}) + "\n")
                n += 1
            if src.report():
                print(src.report())
    (out / "info.json").write_text(json.dumps({"sample_rate": sample_rate, "sources": specs, **seconds}, indent=2))
    return seconds


def main(argv: Optional[list[str]] = None) -> None:
    import omni.tokenizers  # noqa: F401  (registers the tokenizer config sections)

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="codec-tiny", help="config whose codec section gives sample_rate and data_path")
    p.add_argument("--out", default=None, help="output folder (default: codec.data_path)")
    p.add_argument("--minutes", type=float, default=30.0, help="approximate total minutes of synthetic speech")
    p.add_argument("--speakers", type=int, default=120)
    p.add_argument("--source", default="books", choices=("books", "generated"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--from", dest="sources", action="append", default=[], metavar="NAME[:SPLIT]=PATH",
                   help="build from a speech corpus on disk instead (repeatable; librispeech, libritts, vctk, ljspeech, commonvoice)")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. codec.sample_rate=24000")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides).section("codec")
    out = args.out or cfg.data_path
    if args.sources:
        stats = build_from_sources(args.sources, out, cfg.sample_rate)
        print(f"wrote {out}: " + ", ".join(f"{k}={v:.0f}" for k, v in stats.items()))
        return
    stats = build_speech_corpus(out, cfg.sample_rate, args.minutes, speakers=args.speakers, source=args.source, seed=args.seed)
    print(f"wrote {out}: " + ", ".join(f"{k}={v:.0f}" for k, v in stats.items()))
    if not stats["real_eval_clips"]:
        print("no real recordings found: `apt-get install pocketsphinx-testdata alsa-utils` for the WER evaluation")


if __name__ == "__main__":
    main()
