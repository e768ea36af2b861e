"""Map-style datasets over the corpora that data/build_*.py write, for the tokenizer tasks
(omni/train/tasks/codec.py, image.py, video.py). The text and omni corpora are read by
omni/train/packing.py and omni/train/tasks/omni.py."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from PIL import Image

Tensor = torch.Tensor


def _require(folder: Path, what: str, builder: str) -> None:
    if not folder.exists():
        raise FileNotFoundError(f"{folder} does not exist: build the {what} corpus first with `python {builder}`")


class SpeechSegments(torch.utils.data.Dataset):
    """Fixed, non-overlapping crops of ``segment`` samples over a split's utterances laid end to end.

    Item i -> ``[1, segment]`` float32. The split is held in memory as int16 (1 h at 16 kHz = 115 MB).
    """

    def __init__(self, folder: str | Path, split: str, sample_rate: int, segment: int) -> None:
        folder = Path(folder)
        manifest = folder / f"{split}.jsonl"
        _require(manifest, "speech", "data/build_speech.py --config <codec config>")
        info = json.loads((folder / "info.json").read_text())
        if info["sample_rate"] != sample_rate:
            raise ValueError(f"{folder} was built at {info['sample_rate']} Hz but the codec runs at {sample_rate} Hz; "
                             "rebuild it with data/build_speech.py")
        pieces = [sf.read(str(folder / json.loads(line)["path"]), dtype="int16")[0] for line in manifest.read_text().splitlines()]
        self.audio = torch.from_numpy(np.concatenate(pieces))
        self.segment = segment
        if len(self) == 0:
            raise ValueError(f"{manifest} holds less than one {segment}-sample segment of audio")

    def __len__(self) -> int:
        return self.audio.shape[0] // self.segment

    def __getitem__(self, i: int) -> Tensor:
        return self.audio[i * self.segment : (i + 1) * self.segment].float().div(32768.0)[None]


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


class ImageCrops(torch.utils.data.Dataset):
    """``n`` random square crops (scale, position, flip) of the split's images -> ``[3, S, S]`` in [0,1].

    Crop i is a pure function of (seed, i), so the dataset is deterministic and resumable.
    """

    def __init__(self, folder: str | Path, split: str, image_size: int, n: int, seed: int = 0) -> None:
        _require(Path(folder) / split, "image", "data/build_images.py --config <image config>")
        self.images = load_split(folder, split)
        self.image_size, self.n, self.seed = image_size, n, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Tensor:
        rng = np.random.default_rng([self.seed, i])
        return random_crop(self.images[rng.integers(len(self.images))], self.image_size, rng)


class VideoClips(torch.utils.data.Dataset):
    """Clips written by data/build_video.py (``split/*.npy`` uint8 [T, H, W, 3]); item i -> the first
    ``frames`` frames of clip i as ``[frames, 3, H, W]`` in [0, 1]."""

    def __init__(self, folder: str | Path, split: str, frames: int, image_size: int) -> None:
        folder = Path(folder) / split
        _require(folder, "video", "data/build_video.py --config <video config>")
        self.files = sorted(folder.glob("*.npy"))
        if not self.files:
            raise ValueError(f"{folder} holds no .npy clips; rebuild with data/build_video.py")
        first = np.load(self.files[0], mmap_mode="r")
        if first.shape[0] < frames or first.shape[1] != image_size:
            raise ValueError(f"{folder}: clips are {list(first.shape)}, need >= {frames} frames of {image_size} px; "
                             "rebuild with data/build_video.py for this config")
        self.frames = frames

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tensor:
        clip = np.load(self.files[i])[: self.frames]
        return torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255
