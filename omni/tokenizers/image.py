"""Image tokenizer: a convolutional autoencoder with a finite scalar quantiser (FSQ).

    images [B, 3, H, W] in [0, 1] --Encoder2d--> [B, len(levels), h, w] --FSQ--> ids [B, h, w]
    ids --FSQ values--> [B, len(levels), h, w] --Decoder2d--> images [B, 3, H, W]

FSQ (Mentzer et al. 2023) rounds each of a few latent channels to one of ``levels[i]`` values; the
code id is the mixed-radix number of those digits, so the codebook size is ``prod(levels)`` and there
is no codebook to collapse (usage is still measured: see :meth:`ImageTokenizer.code_usage`).
Encoder2d/Decoder2d/FSQ are reused per frame by the video tokenizer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError
from torch import nn

from omni.config import ConfigError
from omni.nn.fsq import FSQ
from omni.tokenizers.base import Tokenizer, load_weights_and_config, register_tokenizer, save_weights_and_config

Tensor = torch.Tensor

# Decoded images larger than this many pixels per side are refused (PIL's decompression-bomb guard
# works on total pixels; this keeps a clear message for absurd inputs).
MAX_SIDE = 16_384


@dataclass
class ImageTokConfig:
    """Image tokenizer shape and training (configs/image*.yaml)."""

    image_size: int = 128
    channels: int = 64  # width of the first conv
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 4])  # one downsampling (x2) between stages
    blocks: int = 2  # residual blocks per stage
    levels: list[int] = field(default_factory=lambda: [8, 8, 8, 5, 5, 5])  # FSQ: 64,000 codes
    # Training data: a folder written by data/build_images.py; random crops per example.
    data_path: str = ".cache/data/images"
    crops_per_epoch: int = 20_000

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def grid(self) -> int:
        return self.image_size // self.downsample

    def validate(self) -> None:
        if self.image_size % self.downsample:
            raise ConfigError(f"image_tok.image_size={self.image_size} must be a multiple of {self.downsample}")
        if any(level < 2 for level in self.levels):
            raise ConfigError(f"image_tok.levels must all be >= 2, got {self.levels}")


class ResBlock2d(nn.Module):
    """x + conv(silu(norm(conv(silu(norm(x)))))): [N, C, H, W] -> [N, C, H, W]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(32, channels // 4), channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(min(32, channels // 4), channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))


class Encoder2d(nn.Module):
    """images [N, 3, H, W] -> latents [N, out_dim, H/ds, W/ds] (ds = 2^(stages-1))."""

    def __init__(self, channels: int, channel_mult: list[int], blocks: int, out_dim: int) -> None:
        super().__init__()
        widths = [channels * m for m in channel_mult]
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1)]
        for i, w in enumerate(widths):
            if i:
                layers.append(nn.Conv2d(widths[i - 1], w, 4, stride=2, padding=1))
            layers += [ResBlock2d(w) for _ in range(blocks)]
        layers += [nn.GroupNorm(min(32, widths[-1] // 4), widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], out_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Decoder2d(nn.Module):
    """latents [N, in_dim, h, w] -> images [N, 3, h*ds, w*ds] (unbounded; clamp for display)."""

    def __init__(self, channels: int, channel_mult: list[int], blocks: int, in_dim: int) -> None:
        super().__init__()
        widths = [channels * m for m in channel_mult][::-1]
        layers: list[nn.Module] = [nn.Conv2d(in_dim, widths[0], 3, padding=1)]
        for i, w in enumerate(widths):
            if i:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(widths[i - 1], w, 3, padding=1)]
            layers += [ResBlock2d(w) for _ in range(blocks)]
        layers += [nn.GroupNorm(min(32, widths[-1] // 4), widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


def _viewer_rgb(img: Any) -> Any:
    """Any Pillow mode -> 8-bit RGB as an image viewer shows it.

    16-bit greyscale (``I;16*``, and ``I``, which Pillow uses for 16-bit PNGs) spans [0, 65535];
    float ``F`` spans [0, 1]; both are clipped to their range and rounded to 8 bits. Alpha
    (RGBA, LA, PA, premultiplied RGBa/La, palettes with a transparent entry) is composited onto
    white. CIELab is converted to sRGB with Pillow's colour management; everything else
    (1, L, P, CMYK, YCbCr, HSV, RGBX) through Pillow's own conversion to RGB.
    """
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        top = 1.0 if mode == "F" else 65535.0
        a = np.clip(np.asarray(img, dtype=np.float64) / top, 0.0, 1.0)
        return Image.fromarray((a * 255).round().astype(np.uint8), "L").convert("RGB")
    if mode == "LAB":
        to_srgb = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
        return ImageCms.applyTransform(img, to_srgb)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("LA" if mode == "La" else mode if mode == "RGBA" else "RGBA").convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path_or_image: Any, image_size: int) -> Tensor:
    """A file path or PIL image -> ``[3, image_size, image_size]`` float in [0, 1].

    What an image viewer shows: EXIF orientation is applied, every Pillow mode is mapped by
    :func:`_viewer_rgb`. The centre square (side = the shorter side) is cropped first and then
    resized to ``image_size`` (bicubic, with Pillow's reducing pass), and JPEGs are decoded at the
    smallest DCT scale that still covers it, so memory follows the output, not the aspect ratio
    (a 1 x 16384 strip costs a 1 x 1 crop). Raises ValueError for unreadable files, empty images and
    images over ``MAX_SIDE`` pixels per side (Pillow's decompression-bomb limit also applies).
    """
    if isinstance(path_or_image, Image.Image):
        img = path_or_image
    else:
        path = Path(path_or_image)
        if not path.is_file():
            raise ValueError(f"{path}: no such image file")
        try:
            img = Image.open(path)
            w, h = img.size
            if min(w, h) > 0:  # JPEG only: decode at 1/2..1/8 scale while the short side stays >= image_size
                s = image_size / min(w, h)
                img.draft(None, (math.ceil(w * s), math.ceil(h * s)))
            img.load()
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
            raise ValueError(f"{path}: not a readable image ({e}); use PNG or JPEG") from e
    w, h = img.size
    if w == 0 or h == 0:
        raise ValueError(f"image has no pixels ({w}x{h})")
    if max(w, h) > MAX_SIDE:
        raise ValueError(f"image is {w}x{h}; sides over {MAX_SIDE} px are refused, downscale it first")
    if img.getexif().get(0x0112, 1) != 1:  # Orientation tag: rotate/flip as viewers do
        img = ImageOps.exif_transpose(img)
        w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = _viewer_rgb(img.crop((left, top, left + side, top + side)))
    img = img.resize((image_size, image_size), Image.BICUBIC, reducing_gap=3.0)
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(image_size, image_size, 3).permute(2, 0, 1).float() / 255


@register_tokenizer
class ImageTokenizer(Tokenizer, nn.Module):
    """``encode(images [B,3,H,W] in [0,1]) -> ids [B,h,w]``; ``decode`` the inverse (clamped to [0,1])."""

    modality = "image"

    def __init__(self, cfg: ImageTokConfig) -> None:
        nn.Module.__init__(self)
        cfg.validate()
        self.cfg = cfg
        self.encoder = Encoder2d(cfg.channels, cfg.channel_mult, cfg.blocks, len(cfg.levels))
        self.quantizer = FSQ(cfg.levels)
        self.decoder = Decoder2d(cfg.channels, cfg.channel_mult, cfg.blocks, len(cfg.levels))

    @property
    def vocab_size(self) -> int:
        return self.quantizer.size

    @property
    def metadata(self) -> dict[str, Any]:
        g = self.cfg.grid
        return {**super().metadata, "image_size": self.cfg.image_size, "grid": [g, g],
                "codebook_size": self.quantizer.size, "levels": list(self.cfg.levels)}

    def _check(self, images: Tensor) -> None:
        s = self.cfg.image_size
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"image tokenizer expects [B, 3, H, W] RGB in [0, 1], got {list(images.shape)}; "
                             "use omni.tokenizers.image.load_image for files")
        if images.shape[-2:] != (s, s):
            raise ValueError(f"image tokenizer expects {s}x{s} images, got {tuple(images.shape[-2:])}; "
                             "load_image resizes and crops")

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Training pass: images [B,3,H,W] in [0,1] -> (reconstruction [B,3,H,W], ids [B,h,w])."""
        values, ids = self.quantizer.quantize(self.encoder(images * 2 - 1))
        return (self.decoder(values) + 1) / 2, ids

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] float in [0, 1] -> ids [B, h, w] long."""
        self._check(images)
        return self.quantizer.quantize(self.encoder(images.float() * 2 - 1))[1]

    @torch.no_grad()
    def decode(self, ids: Tensor) -> Tensor:
        """ids [B, h, w] -> images [B, 3, H, W] in [0, 1]."""
        if ids.dim() != 3:
            raise ValueError(f"image tokenizer decode expects ids [B, h, w], got {list(ids.shape)}")
        return ((self.decoder(self.quantizer.values(ids.long())) + 1) / 2).clamp(0, 1)

    def _save(self, folder: Path) -> dict[str, Any]:
        return save_weights_and_config(self, self.cfg, folder)

    @classmethod
    def _load(cls, folder: Path, state: dict[str, Any]) -> "ImageTokenizer":
        return load_weights_and_config(cls, ImageTokConfig, "image_tok", folder, state)
