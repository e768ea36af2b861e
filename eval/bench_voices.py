"""Benchmark the voices of data/voices.py and the speaker embeddings of omni/io/speaker.py.

For every voice family (the preset Piper voice, espeak-ng, Kokoro training styles and blends, the
unseen kokoro-kumo family) it speaks the spoken QA questions (data/spoken_qa.jsonl) and reports:

- the Whisper judge's WER (eval/intelligibility.py, Whisper base) and its ratio to the preset voice's;
- the synthesis real-time factor on one core (CPU seconds per second of audio, and wall seconds);
- speaker-embedding separation: cosine of the same voice on two sentences, of the preset voice
  against every other voice, and of any two different voices, beside a trivial baseline (the
  cosine of utterances' mean log-mel spectra, centred on their average); the embedding's cost, and its agreement with
  Resemblyzer's own utterance embedding (global normalisation and silence trimming).

    python eval/bench_voices.py --out reports/voices            # ~15 min on one loaded core
    python eval/bench_voices.py --questions 8 --voices 3        # quick look
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Optional

import librosa
import numpy as np
import torch
from tqdm import tqdm

from omni.data.spoken_qa import load_spoken_qa
from omni.data.voices import PRESET_FAMILY, Voice, voice_families
from omni.eval.intelligibility import Judge, word_error_rate
from omni.io.speaker import SpeakerEncoder, cosine


def mean_log_mel(wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Trivial speaker feature: the utterance's mean 40-band log-mel spectrum [40]."""
    mel = librosa.feature.melspectrogram(y=wave.numpy(), sr=sample_rate, n_fft=1024, hop_length=256, n_mels=40)
    return torch.from_numpy(np.log(mel + 1e-6).mean(1))


def separation(feats: dict[tuple[str, int], torch.Tensor], voices: list[Voice]) -> dict[str, float]:
    """Cosine statistics of features keyed (voice name, sentence index 0/1)."""
    same = [cosine(feats[v.name, 0], feats[v.name, 1]) for v in voices]
    pairs = [(cosine(feats[a.name, i], feats[b.name, j]), a, b) for a, b in itertools.combinations(voices, 2)
             for i in (0, 1) for j in (0, 1)]
    preset = [c for c, a, b in pairs if PRESET_FAMILY in (a.family, b.family)]
    diff = [c for c, _, _ in pairs]
    return {"same_min": min(same), "same_mean": float(np.mean(same)), "preset_vs_other_max": max(preset),
            "different_max": max(diff), "different_mean": float(np.mean(diff)),
            "margin_same_min_minus_preset_max": min(same) - max(preset)}


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", type=int, default=0, help="spoken QA questions per family (0: all)")
    p.add_argument("--voices", type=int, default=6, help="voices per family (the preset family has one)")
    p.add_argument("--judge", default="base", help="Whisper model of the judge: base or tiny.en")
    p.add_argument("--out", default="reports/voices")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # one core: the RTF figures are per core
    qa = load_spoken_qa()
    questions = [x.question for x in qa][: args.questions or None]
    families = voice_families(args.voices)
    judge = Judge(args.judge)
    encoder = SpeakerEncoder()
    from resemblyzer import preprocess_wav

    results: dict[str, dict] = {"families": {}, "date": time.strftime("%Y-%m-%d"), "questions": len(questions)}
    emb, base, ref = {}, {}, {}
    emb_cpu = emb_audio = 0.0
    for family, voices in families.items():
        voices[0].synth("Hello.")  # load the engine before timing
        hyps, cpu, wall, audio = [], 0.0, 0.0, 0.0
        for i, q in enumerate(tqdm(questions, desc=family)):
            voice = voices[i % len(voices)]
            t0, c0 = time.perf_counter(), time.process_time()
            wave, sr = voice.synth(q)
            cpu += time.process_time() - c0
            wall += time.perf_counter() - t0
            audio += len(wave) / sr
            hyps.append(judge.transcribe(wave, sr))
        wrong = [{"question": q, "heard": h} for q, h in zip(questions, hyps) if word_error_rate([q], [h]) > 0]
        results["families"][family] = {"voices": [v.name for v in voices], "wer": word_error_rate(questions, hyps),
                                       "rtf_cpu": cpu / audio, "rtf_wall": wall / audio, "audio_s": audio,
                                       "misheard": wrong}
        for v in voices:  # two sentences per voice, answers joined to questions (~3 s) for the embeddings
            for j in (0, 1):
                q, a = qa[len(emb) % len(qa)]
                wave, sr = v.synth(f"{q} {a}")
                c0 = time.process_time()
                emb[v.name, j] = encoder.embed(wave, sr)
                emb_cpu += time.process_time() - c0
                emb_audio += len(wave) / sr
                base[v.name, j] = mean_log_mel(wave, sr)
                ref[v.name, j] = torch.from_numpy(encoder.net.embed_utterance(preprocess_wav(wave.numpy(), sr)))
    everyone = [v for vs in families.values() for v in vs]
    centre = torch.stack(list(base.values())).mean(0)  # cosine of raw log spectra is ~1 for any two voices
    base = {k: x - centre for k, x in base.items()}
    results["speaker"] = {"resemblyzer_windows": separation(emb, everyone), "mean_log_mel_baseline": separation(base, everyone),
                          "embedding_rtf_cpu": emb_cpu / emb_audio,
                          "agreement_with_embed_utterance_mean": float(np.mean([cosine(emb[k], ref[k]) for k in emb])),
                          "agreement_with_embed_utterance_min": float(min(cosine(emb[k], ref[k]) for k in emb))}
    preset_wer = results["families"][PRESET_FAMILY]["wer"]
    print(f"\nvoices, {len(questions)} spoken QA questions each, judge Whisper {args.judge}; RTF on one core")
    print("| family | voices | WER | x preset | RTF (CPU) | RTF (wall) |\n|---|---|---|---|---|---|")
    for family, r in results["families"].items():
        ratio = f"{r['wer'] / preset_wer:.1f}" if preset_wer else "-"
        print(f"| {family} | {len(r['voices'])} | {100 * r['wer']:.1f} % | {ratio} | {r['rtf_cpu']:.3f} | {r['rtf_wall']:.3f} |")
    print("\n| speaker feature | same voice min / mean | preset vs other max | different max / mean | margin |\n|---|---|---|---|---|")
    for name in ("resemblyzer_windows", "mean_log_mel_baseline"):
        s = results["speaker"][name]
        print(f"| {name} | {s['same_min']:.3f} / {s['same_mean']:.3f} | {s['preset_vs_other_max']:.3f} | "
              f"{s['different_max']:.3f} / {s['different_mean']:.3f} | {s['margin_same_min_minus_preset_max']:+.3f} |")
    sp = results["speaker"]
    print(f"embedding: RTF {sp['embedding_rtf_cpu']:.3f} on one core; cosine to Resemblyzer's embed_utterance "
          f"mean {sp['agreement_with_embed_utterance_mean']:.3f}, min {sp['agreement_with_embed_utterance_min']:.3f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "voices.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out / 'voices.json'}")


if __name__ == "__main__":
    main()
