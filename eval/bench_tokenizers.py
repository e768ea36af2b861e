"""Tokenizer speed: streaming codec real-time factor and image/video tokenizer throughput.

    python eval/bench_tokenizers.py                       # tiny configs, 1 CPU thread
    python eval/bench_tokenizers.py --codec-config codec --image-config image --threads 16 --device cuda
    python eval/bench_tokenizers.py --vocoder small                       # + the distilled vocoder, paired with V1

- codec: real-time factor (compute seconds / audio seconds; < 1 keeps up with live audio) of
  streaming encode and decode **one 80 ms frame per call**, against the offline (whole clip, one
  call) path measured in the same run: the ratio is the price of streaming.
- image / video: items per second of encode + decode at batch 1 and at ``--batch``; the ratio is
  the gain from batching.
- ``--vocoder NAME``: the codec again with that generator in place of HiFi-GAN V1 (a ``codec.vocoder``
  value: ``small`` or a generator ``.safetensors``), paired in the same run; the ratio is V1's
  streaming frame time over its.

Weights are random (speed does not depend on them). Prints a table, writes JSON (``--out``).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Callable, Optional

import torch

import omni.tokenizers  # noqa: F401  (registers the config sections)
from omni.config import load_config
from omni.tokenizers.codec import SpeechCodec
from omni.tokenizers.image import ImageTokenizer
from omni.tokenizers.video import VideoTokenizer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best wall time of ``repeats`` runs after one warm-up (seconds)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


@torch.no_grad()
def bench_codec(codec: SpeechCodec, seconds: float, device: torch.device, repeats: int) -> dict[str, float]:
    hop, sr = codec.hop_length, codec.sample_rate
    frames = int(seconds * sr / hop)
    wav = torch.randn(1, 1, frames * hop, device=device) * 0.1
    codes = codec.encode(wav)
    audio_s = frames * hop / sr

    def stream_encode() -> None:
        with codec.streaming(1):
            for i in range(frames):
                codec.encode(wav[..., i * hop : (i + 1) * hop])

    def stream_decode() -> None:
        with codec.streaming(1):
            for i in range(frames):
                codec.decode(codes[..., i : i + 1])

    r = {
        "audio_seconds": audio_s,
        "offline_encode_rtf": timed(lambda: codec.encode(wav), device, repeats) / audio_s,
        "offline_decode_rtf": timed(lambda: codec.decode(codes), device, repeats) / audio_s,
        "stream_encode_rtf": timed(stream_encode, device, repeats) / audio_s,
        "stream_decode_rtf": timed(stream_decode, device, repeats) / audio_s,
    }
    r["stream_frame_ms"] = (r["stream_encode_rtf"] + r["stream_decode_rtf"]) * hop / sr * 1000
    r["stream_vs_offline_encode"] = r["stream_encode_rtf"] / r["offline_encode_rtf"]
    r["stream_vs_offline_decode"] = r["stream_decode_rtf"] / r["offline_decode_rtf"]
    return r


@torch.no_grad()
def bench_items(tok: torch.nn.Module, make: Callable[[int], torch.Tensor], batch: int, device: torch.device,
                repeats: int) -> dict[str, float]:
    """Items/s of encode+decode at batch 1 and ``batch``."""
    out = {}
    for b in (1, batch):
        x = make(b)
        out[f"items_per_s_batch{b}"] = b / timed(lambda: tok.decode(tok.encode(x)), device, repeats)
    out["batch_gain"] = out[f"items_per_s_batch{batch}"] / out["items_per_s_batch1"]
    return out


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--codec-config", default="codec-tiny")
    p.add_argument("--image-config", default="image-tiny")
    p.add_argument("--video-config", default="video-tiny")
    p.add_argument("--vocoder", help="also time the codec with this generator in place of V1 (small, or a .safetensors)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seconds", type=float, default=10.0, help="audio length for the codec")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="reports/bench_tokenizers.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    codec = SpeechCodec(load_config(args.codec_config).section("codec")).to(device).eval()
    img_cfg = load_config(args.image_config).section("image_tok")
    image = ImageTokenizer(img_cfg).to(device).eval()
    if args.vocoder:
        other = codec.with_vocoder(args.vocoder)
    vid_cfg = load_config(args.video_config).section("video_tok")
    video = VideoTokenizer(vid_cfg).to(device).eval()
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    results = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()), "torch": torch.__version__, "threads": args.threads,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else cpu,
        "codec": {"config": args.codec_config, **bench_codec(codec, args.seconds, device, args.repeats)},
        "image": {"config": args.image_config, **bench_items(
            image, lambda b: torch.rand(b, 3, img_cfg.image_size, img_cfg.image_size, device=device), args.batch, device, args.repeats)},
        "video": {"config": args.video_config, "frames_per_clip": vid_cfg.clip_frames, **bench_items(
            video, lambda b: torch.rand(b, vid_cfg.clip_frames, 3, vid_cfg.image_size, vid_cfg.image_size, device=device),
            max(1, args.batch // 4), device, args.repeats)},
    }
    if args.vocoder:
        results["codec_vocoder"] = {"vocoder": args.vocoder, **bench_codec(other, args.seconds, device, args.repeats)}
    c, i, v = results["codec"], results["image"], results["video"]
    print(f"{results['device']} | torch {results['torch']} | {args.threads} thread(s)")
    print(f"{'what':60s} {'value':>10s}")
    rows = [
        (f"codec {args.codec_config}: offline encode RTF", c["offline_encode_rtf"]),
        (f"codec {args.codec_config}: offline decode RTF", c["offline_decode_rtf"]),
        (f"codec {args.codec_config}: streaming encode RTF (1 frame/call)", c["stream_encode_rtf"]),
        (f"codec {args.codec_config}: streaming decode RTF (1 frame/call)", c["stream_decode_rtf"]),
        ("codec: streaming / offline, encode", c["stream_vs_offline_encode"]),
        ("codec: streaming / offline, decode", c["stream_vs_offline_decode"]),
        ("codec: ms per 80 ms frame (encode + decode)", c["stream_frame_ms"]),
    ]
    if args.vocoder:
        o = results["codec_vocoder"]
        rows += [
            (f"codec, vocoder {Path(args.vocoder).name}: offline decode RTF", o["offline_decode_rtf"]),
            (f"codec, vocoder {Path(args.vocoder).name}: streaming decode RTF", o["stream_decode_rtf"]),
            ("codec, that vocoder: ms per 80 ms frame (encode + decode)", o["stream_frame_ms"]),
            ("codec: V1's ms per frame / that vocoder's", c["stream_frame_ms"] / o["stream_frame_ms"]),
        ]
    rows += [
        (f"image {args.image_config}: images/s batch 1", i["items_per_s_batch1"]),
        (f"image {args.image_config}: images/s batch {args.batch}", i[f"items_per_s_batch{args.batch}"]),
        ("image: batch gain", i["batch_gain"]),
        (f"video {args.video_config}: clips/s batch 1 ({vid_cfg.clip_frames} frames)", v["items_per_s_batch1"]),
        ("video: batch gain", v["batch_gain"]),
    ]
    for name, value in rows:
        print(f"{name:60s} {value:10.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
