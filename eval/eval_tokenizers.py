"""Evaluate trained tokenizers and write a report (markdown + JSON + PNG pictures).

    python eval/eval_tokenizers.py --codec runs/codec-tiny --image runs/image-tiny --video runs/video-tiny \
        --out reports/tokenizers

Each of ``--codec/--image/--video`` takes a tokenizer folder (``tokenizer.json`` inside) or a run /
step folder whose checkpoint holds ``tokenizer/`` (written by the tokenizer tasks' on_save).

- codec, on the held-back real recordings (``real_eval.jsonl`` of data/build_speech.py; never
  trained on) and on synthetic val speech (the unseen voice family, never trained on): for the originals, HiFi-GAN
  resynthesis (no quantiser), this codec at 2/4/8/16 codebooks and Codec2 3200/1200 — Whisper WER
  (omni.eval.intelligibility), mel distance and Resemblyzer speaker similarity to the original;
  streaming RTF; spectrogram pictures, original above reconstruction.
- image, on crops of held-out pictures: PSNR, SSIM, codebook usage (codes used / dead); a grid.
- video, on val clips: PSNR per frame index; a strip of frames.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from tqdm import tqdm

# The `dev` extra's pycodec2 (the Codec2 baseline): without it, codec2_round_trip raises ImportError.
try:
    import pycodec2
except ImportError:
    pycodec2 = None
# The `dev` extra's matplotlib (report pictures). Figure without pyplot: no backend is chosen for the process.
try:
    from matplotlib.figure import Figure
except ImportError:
    Figure = None

from omni.io.audio import load_audio, mel_spectrogram, resample
from omni.eval.intelligibility import Judge, word_error_rate
from omni.eval.metrics_audio import align, mel_distance, psnr, speaker_similarity, ssim
from omni.nn.hifigan import hifigan_mel
from omni.tokenizers import Tokenizer, load_tokenizer
from omni.train.checkpoint import resolve_checkpoint
from omni.train.datasets import ImageCrops, VideoClips


def resolve_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer folder, or a run/step folder whose checkpoint holds ``tokenizer/``."""
    path = Path(path)
    if (path / "tokenizer.json").exists():
        return load_tokenizer(path)
    return load_tokenizer(resolve_checkpoint(path) / "tokenizer")


def _manifest(folder: Path, name: str, limit: int) -> list[dict[str, Any]]:
    path = folder / f"{name}.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def codec2_round_trip(wav: torch.Tensor, sample_rate: int, mode: int) -> torch.Tensor:
    """Codec2 at ``mode`` b/s (PyPI pycodec2, which bundles LGPL libcodec2): 8 kHz, one frame per
    encode call as a stream would; [1, samples] at ``sample_rate`` in and out."""
    if pycodec2 is None:
        raise ImportError("the Codec2 baseline needs `pip install pycodec2`")
    c2 = pycodec2.Codec2(mode)
    n = c2.samples_per_frame()
    x = resample(wav.reshape(-1), sample_rate, 8000)
    pcm = (x.clamp(-1, 1) * 32767).round().to(torch.int16).numpy()
    pcm = np.pad(pcm, (0, -len(pcm) % n))
    out = np.concatenate([c2.decode(c2.encode(pcm[i:i + n])) for i in range(0, len(pcm), n)])
    return resample(torch.from_numpy(out.astype(np.float32) / 32768.0), 8000, sample_rate)[None]


def codec_systems(codec) -> dict[str, tuple[Optional[float], Any]]:
    """name -> (bitrate in b/s or None, wav [1, S] -> reconstruction [1, S'] at the codec's rate)."""
    sr = codec.sample_rate
    ks = [k for k in (2, 4, 8, 16) if k <= codec.cfg.num_codebooks]
    systems: dict[str, tuple[Optional[float], Any]] = {
        "original": (None, lambda w: w),
        "HiFi-GAN resynthesis (no quantiser)": (None, lambda w: codec.vocoder(hifigan_mel(w))[0]),
    }
    for k in ks:
        rate = codec.frame_rate * k * math.log2(codec.cfg.codebook_size)
        systems[f"this codec, {k} codebooks"] = (rate, lambda w, k=k: codec.decode(codec.encode(codec.pad_to_hop(w)[None], k))[0])
    for mode in (3200, 1200):
        systems[f"Codec2 {mode}"] = (float(mode), lambda w, mode=mode: codec2_round_trip(w, sr, mode))
    return systems


@torch.no_grad()
def streaming_rtf(codec, wav: torch.Tensor) -> dict[str, float]:
    """Streamed encode + decode (vocoder included) one code frame per call over ``wav`` [1, S] on
    this process's threads: seconds of compute per second of audio, and the per-frame p50 in ms."""
    x = codec.pad_to_hop(wav)[None]
    hop, times = codec.hop_length, []
    with codec.streaming(1):
        for i in range(0, x.shape[-1], hop):
            t = time.perf_counter()
            codec.decode(codec.encode(x[..., i:i + hop]))
            times.append(time.perf_counter() - t)
    frame_s = hop / codec.sample_rate
    return {"rtf": sum(times) / (len(times) * frame_s), "frame_ms_p50": 1000 * sorted(times)[len(times) // 2],
            "frames": len(times), "first_audio_ms": codec.metadata["stream_delay_ms"] + 1000 * frame_s}


@torch.no_grad()
def eval_codec(codec, data: Path, out: Path, judge: Judge, max_synthetic: int = 12, max_real: int = 0,
               sets: tuple[str, ...] = ("real", "synthetic"), systems: Optional[tuple[str, ...]] = None) -> dict[str, Any]:
    """Per set ("real": the held-back recordings; "synthetic": val speech in the unseen voice family, never trained on) and
    per system (originals, HiFi-GAN resynthesis, this codec at each codebook count, Codec2 3200 /
    1200): Whisper WER (the judge), mel distance and Resemblyzer speaker similarity to the original
    (reconstructions aligned to undo each codec's delay); streaming RTF; spectrograms.png."""
    sr = codec.sample_rate
    results: dict[str, Any] = {"metadata": codec.metadata, "judge": judge.name}
    chosen = codec_systems(codec)
    if systems:  # substrings of system names, e.g. ("original", "16 codebooks")
        chosen = {k: v for k, v in chosen.items() if any(x in k for x in systems)}
    pictures = []
    for name, rows in (("real", _manifest(data, "real_eval", max_real)), ("synthetic", _manifest(data, "val", max_synthetic))):
        if name not in sets or not rows:
            results[name] = None
            continue
        refs = [row["text"] for row in rows]
        waves = [load_audio(data / row["path"], sr) for row in rows]
        table = {}
        for system, (bitrate, run) in chosen.items():
            recon = [align(run(w), w, max_lag=4096) for w in tqdm(waves, desc=f"{name}: {system}", unit="clip", leave=False)]
            hyps = judge.transcribe_many(recon, sr, desc=f"{name}: {system}")
            table[system] = {
                "bitrate": bitrate,
                "wer": word_error_rate(refs, hyps),
                "mel_distance": sum(mel_distance(r, w, sr) for r, w in zip(recon, waves)) / len(waves),
                "speaker_similarity": sum(speaker_similarity(r, w, sr) for r, w in zip(recon, waves)) / len(waves),
                "examples": [{"reference": r, "asr": h} for r, h in list(zip(refs, hyps))[:3]],
            }
            if system.startswith("this codec") and system.endswith(f" {codec.cfg.num_codebooks} codebooks"):
                pictures += [(f"{name}: {refs[i][:60]}", waves[i], recon[i]) for i in range(min(2, len(waves)))]
        results[name] = {"clips": len(rows), "seconds": round(sum(r["seconds"] for r in rows), 1), "systems": table}
        if "original" in table:
            results[name]["wer_ratio_to_original"] = {k: v["wer"] / max(table["original"]["wer"], 1e-9) for k, v in table.items()}
    real = _manifest(data, "real_eval", 0) or _manifest(data, "val", 1)
    if real:
        results["streaming"] = streaming_rtf(codec, load_audio(data / real[0]["path"], sr))
    if pictures:
        _spectrogram_figure(pictures, sr, out / "codec_spectrograms.png")
        results["picture"] = "codec_spectrograms.png"
    return results


def _spectrogram_figure(items: list[tuple[str, torch.Tensor, torch.Tensor]], sr: int, path: Path) -> None:
    if Figure is None:
        raise ImportError("report pictures need `pip install matplotlib`")
    fig = Figure(figsize=(4.5 * len(items), 5))
    axes = fig.subplots(2, len(items), squeeze=False)
    for j, (title, wav, recon) in enumerate(items):
        for i, (label, w) in enumerate((("original", wav), ("reconstruction", recon))):
            mel = mel_spectrogram(w, sr, n_mels=80)[0]
            axes[i, j].imshow(mel.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=-10, vmax=mel.max().item())
            axes[i, j].set_title(f"{label}\n{title}" if i == 0 else label, fontsize=8)
            axes[i, j].set_xlabel("frame")
            axes[i, j].set_ylabel("mel bin")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


@torch.no_grad()
def eval_image(tok, data: Path, out: Path, n: int = 128) -> dict[str, Any]:
    """PSNR/SSIM on ``n`` crops of held-out pictures, code usage over val + train crops; grid PNG."""
    size = tok.cfg.image_size
    val = ImageCrops(data, "val", size, n, seed=1)
    x = torch.stack([val[i] for i in range(len(val))])
    ids = torch.cat([tok.encode(b) for b in x.split(32)])
    recon = torch.cat([tok.decode(b) for b in ids.split(32)])
    train = ImageCrops(data, "train", size, 4 * n, seed=2)
    train_ids = torch.cat([tok.encode(torch.stack([train[i] for i in range(s, min(s + 32, len(train)))]))
                           for s in range(0, len(train), 32)])
    counts = torch.bincount(torch.cat([ids.flatten(), train_ids.flatten()]), minlength=tok.vocab_size)
    _image_grid(x[:8], recon[:8], out / "image_grid.png")
    return {
        "metadata": tok.metadata,
        "crops": len(val),
        "psnr_db": psnr(recon, x),
        "ssim": ssim(recon, x),
        "codes_used": int((counts > 0).sum()),
        "dead_code_fraction": float((counts == 0).float().mean()),
        "tokens_counted": int(counts.sum()),
        "picture": "image_grid.png",
    }


def _image_grid(original: torch.Tensor, recon: torch.Tensor, path: Path, rows: tuple[str, str] = ("original", "reconstruction")) -> None:
    if Figure is None:
        raise ImportError("report pictures need `pip install matplotlib`")
    n = original.shape[0]
    fig = Figure(figsize=(1.6 * n, 3.6))
    axes = fig.subplots(2, n, squeeze=False)
    for j in range(n):
        for i, img in enumerate((original[j], recon[j])):
            axes[i, j].imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            axes[i, j].axis("off")
        axes[0, j].set_title(str(j), fontsize=7)
    axes[0, 0].text(-0.1, 0.5, rows[0], transform=axes[0, 0].transAxes, rotation=90, va="center", ha="right")
    axes[1, 0].text(-0.1, 0.5, rows[1], transform=axes[1, 0].transAxes, rotation=90, va="center", ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


@torch.no_grad()
def eval_video(tok, data: Path, out: Path) -> dict[str, Any]:
    """Per-frame PSNR over the val clips; a strip of one clip's frames (original / reconstruction)."""
    clips = VideoClips(data, "val", tok.cfg.clip_frames, tok.cfg.image_size)
    x = torch.stack([clips[i] for i in range(len(clips))])
    recon = torch.cat([tok.decode(tok.encode(b)) for b in x.split(8)])
    per_frame = [psnr(recon[:, t], x[:, t]) for t in range(x.shape[1])]
    _image_grid(x[0], recon[0], out / "video_frames.png")
    return {"metadata": tok.metadata, "clips": len(clips), "frames": x.shape[1], "psnr_db": sum(per_frame) / len(per_frame),
            "psnr_db_per_frame": per_frame, "picture": "video_frames.png"}


def write_markdown(results: dict[str, Any], path: Path) -> None:
    lines = [f"# Tokenizer evaluation ({results['date']})", ""]
    if "codec" in results:
        c = results["codec"]
        m = c["metadata"]
        lines += ["## Speech codec", "", f"`{results['paths']['codec']}` — {m['sample_rate']} Hz, {m['frame_rate']:.2f} Hz frames, "
                  f"{m['num_codebooks']} x {m['codebook_size']} codes ({m['bitrate']:.0f} b/s at all codebooks); "
                  f"WER by Whisper {c['judge']} after Whisper's normalisation", ""]
        for name in ("real", "synthetic"):
            r = c.get(name)
            if not r:
                continue
            lines += [f"### {name}: {r['clips']} clips, {r['seconds']} s", "",
                      "| system | b/s | WER | x original | mel distance | speaker similarity |", "|---|---|---|---|---|---|"]
            for system, v in r["systems"].items():
                rate = f"{v['bitrate']:.0f}" if v["bitrate"] else "—"
                ratio = r.get("wer_ratio_to_original", {}).get(system, float("nan"))
                lines.append(f"| {system} | {rate} | {100 * v['wer']:.1f}% | {ratio:.2f} | "
                             f"{v['mel_distance']:.3f} | {v['speaker_similarity']:.3f} |")
            lines.append("")
        if c.get("streaming"):
            st = c["streaming"]
            lines += [f"Streaming encode + decode (vocoder included), one frame per call: RTF {st['rtf']:.2f}, "
                      f"{st['frame_ms_p50']:.0f} ms per frame (p50); first audio {st['first_audio_ms']:.0f} ms after "
                      "the first input sample (one frame + the vocoder's lookahead + one hop), compute excluded.", ""]
        if "picture" in c:
            lines += [f"![spectrograms]({c['picture']})", ""]
    if "image" in results:
        r = results["image"]
        lines += ["## Image tokenizer", "", f"`{results['paths']['image']}` — {r['metadata']['image_size']} px -> "
                  f"{r['metadata']['grid'][0]}x{r['metadata']['grid'][1]} tokens, {r['metadata']['codebook_size']} codes", "",
                  f"Held-out crops: {r['crops']}; PSNR {r['psnr_db']:.2f} dB; SSIM {r['ssim']:.3f}; codes used "
                  f"{r['codes_used']}/{r['metadata']['codebook_size']} (dead {100 * r['dead_code_fraction']:.1f}%, "
                  f"over {r['tokens_counted']} tokens)", "", f"![grid]({r['picture']})", ""]
    if "video" in results:
        r = results["video"]
        lines += ["## Video tokenizer", "", f"`{results['paths']['video']}` — {r['metadata']['fps']} fps, "
                  f"{r['metadata']['tokens_per_second']:.0f} tokens/s", "",
                  f"Val clips: {r['clips']} x {r['frames']} frames; mean PSNR {r['psnr_db']:.2f} dB; per frame: "
                  + ", ".join(f"{v:.1f}" for v in r["psnr_db_per_frame"]), "", f"![frames]({r['picture']})", ""]
    path.write_text("\n".join(lines) + "\n")


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--codec", help="codec tokenizer folder or run/step folder")
    p.add_argument("--vocoder", help="voice the codec with this generator instead of the one its tokenizer.json "
                   "names: universal (V1), small, or a generator .safetensors")
    p.add_argument("--image", help="image tokenizer folder or run/step folder")
    p.add_argument("--video", help="video tokenizer folder or run/step folder")
    p.add_argument("--speech-data", help="speech corpus folder (default: the codec's codec.data_path)")
    p.add_argument("--image-data", help="image corpus folder (default: image_tok.data_path)")
    p.add_argument("--video-data", help="video corpus folder (default: video_tok.data_path)")
    p.add_argument("--max-synthetic", type=int, default=12, help="synthetic val utterances to score")
    p.add_argument("--max-real", type=int, default=0, help="real clips to score (0 = all)")
    p.add_argument("--sets", default="real,synthetic", help="codec evaluation sets, comma-separated")
    p.add_argument("--systems", default="", help="codec systems to score (comma-separated name parts; default all)")
    p.add_argument("--judge", default="base", choices=("base", "tiny.en"), help="Whisper model of the WER judge")
    p.add_argument("--out", default="reports/tokenizers")
    args = p.parse_args(argv)
    if not (args.codec or args.image or args.video):
        p.error("give at least one of --codec, --image, --video")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__, "paths": {}}
    if args.codec:
        codec = resolve_tokenizer(args.codec)
        if args.vocoder:
            codec = codec.with_vocoder(args.vocoder)
        results["paths"]["codec"] = args.codec
        results["vocoder"] = codec.cfg.vocoder
        results["codec"] = eval_codec(codec, Path(args.speech_data or codec.cfg.data_path), out, Judge(args.judge),
                                      args.max_synthetic, args.max_real, tuple(args.sets.split(",")),
                                      tuple(x for x in args.systems.split(",") if x) or None)
    if args.image:
        tok = resolve_tokenizer(args.image)
        results["paths"]["image"] = args.image
        results["image"] = eval_image(tok, Path(args.image_data or tok.cfg.data_path), out)
    if args.video:
        tok = resolve_tokenizer(args.video)
        results["paths"]["video"] = args.video
        results["video"] = eval_video(tok, Path(args.video_data or tok.cfg.data_path), out)
    (out / "report.json").write_text(json.dumps(results, indent=2, default=str))
    write_markdown(results, out / "report.md")
    print((out / "report.md").read_text())


if __name__ == "__main__":
    main()
