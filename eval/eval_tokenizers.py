"""Evaluate trained tokenizers and write a report (markdown + JSON + PNG pictures).

    python eval/eval_tokenizers.py --codec runs/codec-tiny --image runs/image-tiny --video runs/video-tiny \
        --out reports/tokenizers

Each of ``--codec/--image/--video`` takes a tokenizer folder (``tokenizer.json`` inside) or a run /
step folder whose checkpoint holds ``tokenizer/`` (written by the tokenizer tasks' on_save).

- codec, on the held-back real recordings (``real_eval.jsonl`` of data/build_speech.py; never
  trained on) and on synthetic val speech: mel distance, SI-SNR, and pocketsphinx word error rate of
  the originals and of the reconstructions against the reference transcripts; mel distance when
  decoding with fewer codebooks; spectrogram pictures, original above reconstruction.
- image, on crops of held-out pictures: PSNR, SSIM, codebook usage (codes used / dead); a grid.
- video, on val clips: PSNR per frame index; a strip of frames.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm import tqdm

from omni.io.audio import load_audio, mel_spectrogram
from omni.eval.metrics_audio import mel_distance, psnr, si_snr, ssim, transcribe, word_error_rate
from omni.tokenizers import Tokenizer, load_tokenizer


def resolve_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer folder, or a run/step folder whose checkpoint holds ``tokenizer/``."""
    path = Path(path)
    if (path / "tokenizer.json").exists():
        return load_tokenizer(path)
    from omni.train.checkpoint import resolve_checkpoint

    return load_tokenizer(resolve_checkpoint(path) / "tokenizer")


def _manifest(folder: Path, name: str, limit: int) -> list[dict[str, Any]]:
    path = folder / f"{name}.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[:limit] if limit else rows


@torch.no_grad()
def eval_codec(codec, data: Path, out: Path, max_synthetic: int = 20) -> dict[str, Any]:
    """Metrics per set ("real", "synthetic") plus codebook-count sweep; writes spectrograms.png."""
    sr, hop = codec.sample_rate, codec.hop_length
    results: dict[str, Any] = {"metadata": codec.metadata}
    pictures = []
    for name, rows in (("real", _manifest(data, "real_eval", 0)), ("synthetic", _manifest(data, "val", max_synthetic))):
        if not rows:
            results[name] = None
            continue
        refs, hyp_orig, hyp_recon, mels, snrs, sweep = [], [], [], [], [], {}
        for row in tqdm(rows, desc=f"codec {name}", unit="clip"):
            wav = load_audio(data / row["path"], sr)
            x = codec.pad_to_hop(wav)[None]  # [1, 1, S]
            codes = codec.encode(x)
            recon = codec.decode(codes)[0, :, : wav.shape[-1]]
            refs.append(row["text"])
            hyp_orig.append(transcribe(wav, sr))
            hyp_recon.append(transcribe(recon, sr))
            mels.append(mel_distance(recon, wav, sr))
            snrs.append(si_snr(recon, wav))
            for k in sorted({1, 2, 4, codec.cfg.num_codebooks} & set(range(1, codec.cfg.num_codebooks + 1))):
                sweep.setdefault(k, []).append(mel_distance(codec.decode(codes[:, :k])[0, :, : wav.shape[-1]], wav, sr))
            if sum(title.startswith(name) for title, _, _ in pictures) < 2:  # two pictures per set
                pictures.append((f"{name}: {row['text'][:60]}", wav, recon))
        results[name] = {
            "clips": len(rows),
            "seconds": round(sum(r["seconds"] for r in rows), 1),
            "mel_distance": sum(mels) / len(mels),
            "si_snr_db": sum(snrs) / len(snrs),
            "wer_original": word_error_rate(refs, hyp_orig),
            "wer_reconstruction": word_error_rate(refs, hyp_recon),
            "mel_distance_by_codebooks": {k: sum(v) / len(v) for k, v in sweep.items()},
            "examples": [{"reference": r, "original_asr": a, "reconstruction_asr": b}
                         for r, a, b in list(zip(refs, hyp_orig, hyp_recon))[:5]],
        }
    if pictures:
        _spectrogram_figure(pictures, sr, out / "codec_spectrograms.png")
        results["picture"] = "codec_spectrograms.png"
    return results


def _spectrogram_figure(items: list[tuple[str, torch.Tensor, torch.Tensor]], sr: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(items), figsize=(4.5 * len(items), 5), squeeze=False)
    for j, (title, wav, recon) in enumerate(items):
        for i, (label, w) in enumerate((("original", wav), ("reconstruction", recon))):
            mel = mel_spectrogram(w, sr, n_mels=80)[0]
            axes[i, j].imshow(mel.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=-10, vmax=mel.max().item())
            axes[i, j].set_title(f"{label}\n{title}" if i == 0 else label, fontsize=8)
            axes[i, j].set_xlabel("frame")
            axes[i, j].set_ylabel("mel bin")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


@torch.no_grad()
def eval_image(tok, data: Path, out: Path, n: int = 128) -> dict[str, Any]:
    """PSNR/SSIM on ``n`` crops of held-out pictures, code usage over val + train crops; grid PNG."""
    from omni.train.datasets import ImageCrops

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = original.shape[0]
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.6), squeeze=False)
    for j in range(n):
        for i, img in enumerate((original[j], recon[j])):
            axes[i, j].imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            axes[i, j].axis("off")
        axes[0, j].set_title(str(j), fontsize=7)
    axes[0, 0].text(-0.1, 0.5, rows[0], transform=axes[0, 0].transAxes, rotation=90, va="center", ha="right")
    axes[1, 0].text(-0.1, 0.5, rows[1], transform=axes[1, 0].transAxes, rotation=90, va="center", ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@torch.no_grad()
def eval_video(tok, data: Path, out: Path) -> dict[str, Any]:
    """Per-frame PSNR over the val clips; a strip of one clip's frames (original / reconstruction)."""
    from omni.train.datasets import VideoClips

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
        lines += ["## Speech codec", "", f"`{results['paths']['codec']}` — {m['sample_rate']} Hz, {m['frame_rate']} Hz frames, "
                  f"{m['num_codebooks']} x {m['codebook_size']} codes, {m['bitrate']:.0f} bps", "",
                  "| set | clips | seconds | mel distance | SI-SNR dB | WER original | WER reconstruction |", "|---|---|---|---|---|---|---|"]
        for name in ("real", "synthetic"):
            r = c.get(name)
            if r:
                lines.append(f"| {name} | {r['clips']} | {r['seconds']} | {r['mel_distance']:.3f} | {r['si_snr_db']:.2f} | "
                             f"{100 * r['wer_original']:.1f}% | {100 * r['wer_reconstruction']:.1f}% |")
        for name in ("real", "synthetic"):
            r = c.get(name)
            if r:
                sweep = ", ".join(f"{k}: {v:.3f}" for k, v in r["mel_distance_by_codebooks"].items())
                lines += ["", f"Mel distance by codebooks used ({name}): {sweep}", "", f"Examples ({name}):", ""]
                lines += [f"- ref: *{e['reference']}* — orig ASR: *{e['original_asr']}* — recon ASR: *{e['reconstruction_asr']}*"
                          for e in r["examples"][:3]]
        if "picture" in c:
            lines += ["", f"![spectrograms]({c['picture']})", ""]
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
    p.add_argument("--image", help="image tokenizer folder or run/step folder")
    p.add_argument("--video", help="video tokenizer folder or run/step folder")
    p.add_argument("--speech-data", help="speech corpus folder (default: the codec's codec.data_path)")
    p.add_argument("--image-data", help="image corpus folder (default: image_tok.data_path)")
    p.add_argument("--video-data", help="video corpus folder (default: video_tok.data_path)")
    p.add_argument("--max-synthetic", type=int, default=20, help="synthetic val utterances to score")
    p.add_argument("--out", default="reports/tokenizers")
    args = p.parse_args(argv)
    if not (args.codec or args.image or args.video):
        p.error("give at least one of --codec, --image, --video")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__, "paths": {}}
    if args.codec:
        codec = resolve_tokenizer(args.codec)
        results["paths"]["codec"] = args.codec
        results["codec"] = eval_codec(codec, Path(args.speech_data or codec.cfg.data_path), out, args.max_synthetic)
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
