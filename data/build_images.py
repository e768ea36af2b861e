"""Build the image corpus from the pictures bundled with scikit-image and scikit-learn.

The bundled set is small (about 20 pictures: astronaut, coffee, chelsea, rocket, hubble, retina,
textures, text, china, flower, ...), so the tokenizer trains on random crops of them: each example
is a square crop of random scale (from ``image_size`` pixels up to the whole shorter side) and
position, flipped horizontally half of the time, resized to ``image_size`` (see
:func:`omni.train.datasets.random_crop`). Whole pictures are held out for validation, so validation crops show
scenes the tokenizer never saw.

    python data/build_images.py --config configs/image-tiny.yaml     # -> image_tok.data_path/{train,val}/*.png

The same layout from image corpora on disk (data/sources/: COCO, image-text folders): each picture's
centre square at ``--side`` px, every ``VAL_EVERY``-th to val, bad files skipped and reported. The
tokenizer's dataset holds a split in memory (~200 kB per 256-px picture): ``--limit`` caps the count::

    python data/build_images.py --config configs/image.yaml --from coco=/data/coco --side 256 --limit 50000
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

# The `dev` extra's bundled pictures: without them, source_images raises ImportError naming the package.
try:
    import skimage.data
except ImportError:
    skimage = None
try:
    from sklearn.datasets import load_sample_images
except ImportError:
    load_sample_images = None

import omni.tokenizers  # noqa: F401  (registers the tokenizer config sections)
from omni.config import load_config
from omni.data.sources import IMAGE, MediaSpec, open_sources

# Scikit-image pictures that ship inside the wheel (no download); greyscale ones become RGB.
SKIMAGE_NAMES = ("astronaut", "camera", "chelsea", "coffee", "coins", "rocket", "hubble_deep_field", "retina",
                 "immunohistochemistry", "moon", "page", "text", "clock", "brick", "grass", "gravel", "colorwheel",
                 "logo")
VAL_NAMES = ("coffee", "grass")  # held out: a photo and a texture


def source_images() -> dict[str, np.ndarray]:
    """Name -> uint8 RGB array [H, W, 3] of every bundled picture available."""
    if skimage is None or load_sample_images is None:
        raise ImportError("the bundled pictures need `pip install scikit-image scikit-learn` (the `dev` extra)")
    out = {}
    for name in SKIMAGE_NAMES:
        img = getattr(skimage.data, name)()
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        out[name] = np.ascontiguousarray(img[..., :3]).astype(np.uint8)
    samples = load_sample_images()
    for fname, img in zip(samples.filenames, samples.images):
        out[Path(fname).stem] = img
    return out


def build_image_corpus(out: str | Path) -> dict[str, int]:
    """Write ``out/{train,val}/NAME.png``; returns image counts per split."""
    out = Path(out)
    counts = {"train": 0, "val": 0}
    for name, img in source_images().items():
        split = "val" if name in VAL_NAMES else "train"
        (out / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(out / split / f"{name}.png")
        counts[split] += 1
    (out / "info.json").write_text(json.dumps(counts))
    return counts


VAL_EVERY = 50


def build_from_sources(specs: list[str], out: str | Path, side: int, limit: int = 0) -> dict[str, int]:
    """Write ``out/{train,val}/NNNNNNN.png`` from the image sources ``specs`` (``NAME[:SPLIT]=PATH``),
    at most ``limit`` pictures (0: all); returns counts per split. Raises ValueError for a non-image source."""
    out = Path(out)
    counts = {"train": 0, "val": 0}
    n = 0
    for src in open_sources(specs, IMAGE, out):
        for img, _, _ in tqdm(src.read(MediaSpec(image_size=side)), desc=f"images from {src.name}", unit="img"):
            if limit and n >= limit:
                break
            split = "val" if n % VAL_EVERY == VAL_EVERY - 1 else "train"
            Image.fromarray((img.permute(1, 2, 0) * 255).round().byte().numpy()).save(out / split / f"{n:07d}.png")
            counts[split] += 1
            n += 1
        if src.report():
            print(src.report())
    (out / "info.json").write_text(json.dumps({**counts, "sources": specs, "side": side}))
    return counts


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="image-tiny", help="config whose image_tok.data_path is the output folder")
    p.add_argument("--out", default=None)
    p.add_argument("--from", dest="sources", action="append", default=[], metavar="NAME[:SPLIT]=PATH",
                   help="build from an image corpus on disk instead (repeatable; coco, images)")
    p.add_argument("--side", type=int, default=256, help="with --from: side of the saved centre squares (px)")
    p.add_argument("--limit", type=int, default=0, help="with --from: at most this many pictures (0: all)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    out = args.out or load_config(args.config, args.overrides).section("image_tok").data_path
    counts = build_from_sources(args.sources, out, args.side, args.limit) if args.sources else build_image_corpus(out)
    print(f"wrote {out}: {counts}")


if __name__ == "__main__":
    main()
