"""Build the image corpus from the pictures bundled with scikit-image and scikit-learn.

The bundled set is small (about 20 pictures: astronaut, coffee, chelsea, rocket, hubble, retina,
textures, text, china, flower, ...), so the tokenizer trains on random crops of them: each example
is a square crop of random scale (from ``image_size`` pixels up to the whole shorter side) and
position, flipped horizontally half of the time, resized to ``image_size`` (see
:func:`random_crop`). Whole pictures are held out for validation, so validation crops show
scenes the tokenizer never saw.

    python data/build_images.py --config configs/image-tiny.yaml     # -> image_tok.data_path/{train,val}/*.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from omni.config import load_config

# Scikit-image pictures that ship inside the wheel (no download); greyscale ones become RGB.
SKIMAGE_NAMES = ("astronaut", "camera", "chelsea", "coffee", "coins", "rocket", "hubble_deep_field", "retina",
                 "immunohistochemistry", "moon", "page", "text", "clock", "brick", "grass", "gravel", "colorwheel",
                 "logo")
VAL_NAMES = ("coffee", "grass")  # held out: a photo and a texture


def source_images() -> dict[str, np.ndarray]:
    """Name -> uint8 RGB array [H, W, 3] of every bundled picture available."""
    import skimage.data
    from sklearn.datasets import load_sample_images

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


def load_split(folder: str | Path, split: str) -> list[torch.Tensor]:
    """The split's pictures as uint8 tensors [3, H, W]."""
    files = sorted((Path(folder) / split).glob("*.png"))
    if not files:
        raise FileNotFoundError(f"{Path(folder) / split} holds no .png; run data/build_images.py")
    return [torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1).contiguous() for f in files]


def random_crop(image: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """A random square crop of ``image`` (uint8 [3, H, W]) -> float [3, size, size] in [0, 1].

    Crop side uniform in log scale between ``size`` (or the shorter side, if smaller) and the
    shorter side; position uniform; horizontal flip with probability 1/2; area/bilinear resize.
    """
    h, w = image.shape[1:]
    short = min(h, w)
    lo = min(size, short)
    side = int(round(np.exp(rng.uniform(np.log(lo), np.log(short)))))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = image[:, top : top + side, left : left + side].float()[None] / 255
    if side != size:
        crop = F.interpolate(crop, size=(size, size), mode="area" if side > size else "bilinear", align_corners=None)
    crop = crop[0].clamp(0, 1)
    return crop.flip(-1) if rng.random() < 0.5 else crop


def main(argv: Optional[list[str]] = None) -> None:
    import omni.tokenizers  # noqa: F401  (registers the tokenizer config sections)

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="image-tiny", help="config whose image_tok.data_path is the output folder")
    p.add_argument("--out", default=None)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    out = args.out or load_config(args.config, args.overrides).section("image_tok").data_path
    print(f"wrote {out}: {build_image_corpus(out)}")


if __name__ == "__main__":
    main()
