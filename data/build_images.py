"""Build the image corpus from the pictures bundled with scikit-image and scikit-learn.

The bundled set is small (about 20 pictures: astronaut, coffee, chelsea, rocket, hubble, retina,
textures, text, china, flower, ...), so the tokenizer trains on random crops of them: each example
is a square crop of random scale (from ``image_size`` pixels up to the whole shorter side) and
position, flipped horizontally half of the time, resized to ``image_size`` (see
:func:`omni.train.datasets.random_crop`). Whole pictures are held out for validation, so validation crops show
scenes the tokenizer never saw.

    python data/build_images.py --config configs/image-tiny.yaml     # -> image_tok.data_path/{train,val}/*.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

import numpy as np
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
