"""Build the video corpus: short clips synthesised from the bundled pictures (data/build_images.py).

Each clip is a camera move over one picture — a pan (the crop window slides), a zoom (it grows or
shrinks) or both — with 0-3 coloured shapes (discs, boxes) moving at constant velocity on top,
rendered at ``video_tok.fps``. Clips of validation pictures go to ``val/``.

    python data/build_video.py --config configs/video-tiny.yaml --clips 400   # -> video_tok.data_path/{train,val}/*.npy

Each clip is a ``.npy`` uint8 array ``[T, H, W, 3]`` (``omni.tokenizers.video.load_video`` reads it).

The same layout from videos on disk (data/sources/ ``videos``: mp4 / webm / ... + captions.jsonl):
each video decoded at ``video_tok.fps`` and ``image_size`` (centre square), cut into consecutive clips
of the clip length, every ``VAL_EVERY``-th video's clips to val; bad files and videos over 10 minutes
are skipped and reported::

    python data/build_video.py --config configs/video.yaml --from videos=/data/my_videos
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import omni.tokenizers  # noqa: F401  (registers the video_tok config section)
from omni.config import load_config
from omni.data.build_images import build_image_corpus
from omni.data.sources import VIDEO, MediaSpec, open_sources
from omni.train.datasets import load_split


def render_clip(image: torch.Tensor, size: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """One clip over ``image`` (uint8 [3, H, W]) -> uint8 [frames, size, size, 3]."""
    h, w = image.shape[1:]
    short = min(h, w)
    # start/end crop side (zoom) and centre (pan); sides stay within the picture
    sides = np.exp(rng.uniform(np.log(min(size, short)), np.log(short), 2))
    if rng.random() < 0.3:
        sides[1] = sides[0]  # pure pan
    centres = [(rng.uniform(s / 2, w - s / 2), rng.uniform(s / 2, h - s / 2)) for s in sides]
    src = image.float()[None] / 255
    shapes = [(rng.uniform(0, size, 2), rng.uniform(-size / 8, size / 8, 2), rng.uniform(size / 12, size / 5),
               torch.tensor(rng.uniform(0, 1, 3), dtype=torch.float32), rng.random() < 0.5)
              for _ in range(rng.integers(0, 4))]
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        a = t / max(frames - 1, 1)
        side = sides[0] * (1 - a) + sides[1] * a
        cx = centres[0][0] * (1 - a) + centres[1][0] * a
        cy = centres[0][1] * (1 - a) + centres[1][1] * a
        # affine sampling grid of the crop window, in [-1, 1] picture coordinates
        theta = torch.tensor([[side / w, 0, 2 * cx / w - 1], [0, side / h, 2 * cy / h - 1]], dtype=torch.float32)[None]
        grid = F.affine_grid(theta, [1, 3, size, size], align_corners=False)
        frame = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
        for pos, vel, radius, colour, is_disc in shapes:
            px, py = pos + vel * t
            if is_disc:
                mask = (xx - px) ** 2 + (yy - py) ** 2 <= radius**2
            else:
                mask = ((xx - px).abs() <= radius) & ((yy - py).abs() <= radius)
            frame = torch.where(mask[None], colour[:, None, None], frame)
        out[t] = (frame.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return out


def build_video_corpus(out: str | Path, image_size: int, frames: int, clips: int, val_fraction: float = 0.1,
                       seed: int = 0, images: Optional[str | Path] = None) -> dict[str, int]:
    """Write ``out/{train,val}/NNNNNN.npy`` clips; pictures come from ``images`` (built there if absent)."""
    out = Path(out)
    images = Path(images) if images else out / "pictures"
    if not (images / "train").exists():
        build_image_corpus(images)
    counts = {}
    n_val = max(1, int(clips * val_fraction))
    for split, n in (("train", clips - n_val), ("val", n_val)):
        pictures = load_split(images, split)
        (out / split).mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, split == "val"])
        for i in tqdm(range(n), desc=f"video {split}", unit="clip"):
            np.save(out / split / f"{i:06d}.npy", render_clip(pictures[rng.integers(len(pictures))], image_size, frames, rng))
        counts[split] = n
    (out / "info.json").write_text(json.dumps({"image_size": image_size, "frames": frames, **counts}))
    return counts


VAL_EVERY = 20


def build_from_sources(specs: list[str], out: str | Path, image_size: int, frames: int, fps: float) -> dict[str, int]:
    """Write ``out/{train,val}/NNNNNNN.npy`` clips of ``frames`` frames cut from the video sources
    ``specs``; returns clip counts per split. Raises ValueError for a non-video source."""
    out = Path(out)
    counts = {"train": 0, "val": 0}
    videos = 0
    for src in open_sources(specs, VIDEO, out):
        for video, _, _ in tqdm(src.read(MediaSpec(image_size=image_size, fps=fps, max_seconds=600)), desc=f"clips from {src.name}"):
            split = "val" if videos % VAL_EVERY == VAL_EVERY - 1 else "train"
            arr = (video.permute(0, 2, 3, 1) * 255).round().byte().numpy()
            for start in range(0, arr.shape[0] - frames + 1, frames):
                np.save(out / split / f"{sum(counts.values()):07d}.npy", arr[start : start + frames])
                counts[split] += 1
            videos += 1
        if src.report():
            print(src.report())
    (out / "info.json").write_text(json.dumps({"image_size": image_size, "frames": frames, "sources": specs, **counts}))
    return counts


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="video-tiny", help="config whose video_tok section gives size, frames, path")
    p.add_argument("--out", default=None)
    p.add_argument("--clips", type=int, default=400)
    p.add_argument("--frames", type=int, default=0, help="frames per clip (default: video_tok.clip_frames)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--from", dest="sources", action="append", default=[], metavar="videos=PATH",
                   help="cut clips from videos on disk instead of synthesising them (repeatable)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides).section("video_tok")
    out = args.out or cfg.data_path
    frames = args.frames or cfg.clip_frames
    if args.sources:
        counts = build_from_sources(args.sources, out, cfg.image_size, frames, cfg.fps)
    else:
        counts = build_video_corpus(out, cfg.image_size, frames, args.clips, seed=args.seed)
    print(f"wrote {out}: {counts} clips at {cfg.fps} fps")


if __name__ == "__main__":
    main()
