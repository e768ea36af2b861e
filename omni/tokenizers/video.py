"""Video tokenizer: per-frame 2-D autoencoder + causal temporal compression, FSQ tokens.

    video [B, T, 3, H, W] --Encoder2d per frame--> [B, C, T, h, w]
        --causal 3-D convs, time stride r--> [B, d, T', h, w] --FSQ--> ids [B, T', h, w]

with ``T = 1 + r*(T'-1)``: the strided temporal conv sees ``r-1`` zero frames before frame 0, so
token step 0 encodes frame 0 alone (the first frame is an image) and step k >= 1 encodes frames
``1 + r*(k-1) .. r*k``. The decoder mirrors it (sub-pixel upsampling in time, the first ``r-1``
frames of the upsampled sequence are dropped). All temporal convs are :class:`CausalConv`, so
inside ``with tok.streaming(B):`` encoding frame 0, then ``r`` frames per call, gives exactly the
offline tokens, and decoding one token step per call gives exactly the offline frames.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageSequence, UnidentifiedImageError
from torch import nn

from omni.config import ConfigError
from omni.io.video import VIDEO_SUFFIXES, read_video
from omni.streaming import StreamingModule, StreamingState
from omni.nn.causal import CausalConv, CausalUpsample
from omni.nn.fsq import FSQ
from omni.tokenizers.base import Tokenizer, load_weights_and_config, register_tokenizer, save_weights_and_config
from omni.tokenizers.image import Decoder2d, Encoder2d, load_image

Tensor = torch.Tensor

MAX_FRAMES = 10_000  # longer inputs are refused: split the video into clips


@dataclass
class VideoTokConfig:
    """Video tokenizer shape and training (configs/video*.yaml)."""

    image_size: int = 128
    fps: int = 8  # frames are expected at this rate (data/build_video.py renders at it)
    temporal_stride: int = 4  # r: frames per token step after the first
    channels: int = 64
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 4])
    blocks: int = 1
    latent_channels: int = 64  # width of the temporal stack
    levels: list[int] = field(default_factory=lambda: [8, 8, 8, 5, 5, 5])
    data_path: str = ".cache/data/video"
    clip_steps: int = 3  # token steps per training clip: 1 + r*(clip_steps-1) frames

    @property
    def grid(self) -> int:
        return self.image_size // 2 ** (len(self.channel_mult) - 1)

    @property
    def clip_frames(self) -> int:
        return 1 + self.temporal_stride * (self.clip_steps - 1)

    def validate(self) -> None:
        if self.image_size % 2 ** (len(self.channel_mult) - 1):
            raise ConfigError(f"video_tok.image_size={self.image_size} must be a multiple of {2 ** (len(self.channel_mult) - 1)}")
        if self.temporal_stride < 1 or self.fps < 1:
            raise ConfigError("video_tok.temporal_stride and video_tok.fps must be >= 1")


class _TimeBlock(nn.Module):
    """x + causal 3-D conv(elu(causal 3-D conv(elu(x)))): [B, C, T, h, w] -> same."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = CausalConv(channels, channels, 3, spatial=3)
        self.conv2 = CausalConv(channels, channels, 1, spatial=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.elu(self.conv1(F.elu(x))))


class _DropState(StreamingState):
    def __init__(self, to_drop: int) -> None:
        self.initial = to_drop
        self.to_drop = to_drop

    def reset(self, mask: Optional[Tensor] = None) -> None:
        if mask is not None and not bool(mask.all()) and self.to_drop != self.initial:
            raise RuntimeError("video streams in one batch restart together: reset with mask=None")
        self.to_drop = self.initial


class _DropLeading(StreamingModule):
    """Drops the first ``n`` frames of the (whole, or streamed) sequence [B, C, T, ...]."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def _init_streaming_state(self, batch_size: int, **options: Any) -> _DropState:
        return _DropState(self.n)

    def forward(self, x: Tensor) -> Tensor:
        state = self._streaming_state
        if state is None:
            return x[:, :, self.n:]
        drop = min(state.to_drop, x.shape[2])
        state.to_drop -= drop
        return x[:, :, drop:]


@register_tokenizer
class VideoTokenizer(Tokenizer, StreamingModule):
    """``encode(video [B,T,3,H,W] in [0,1]) -> ids [B,T',h,w]`` with ``T = 1 + r(T'-1)``; ``decode``
    the inverse. Streaming: first call one frame, then ``r`` frames per call (encode); any number of
    token steps per call (decode)."""

    modality = "video"

    def __init__(self, cfg: VideoTokConfig) -> None:
        StreamingModule.__init__(self)
        cfg.validate()
        self.cfg = cfg
        c, r = cfg.latent_channels, cfg.temporal_stride
        d = len(cfg.levels)
        self.frame_encoder = Encoder2d(cfg.channels, cfg.channel_mult, cfg.blocks, c)
        self.time_encoder = nn.Sequential(
            _TimeBlock(c), nn.ELU(), CausalConv(c, c, r, stride=r, spatial=3, pad=r - 1), _TimeBlock(c), nn.ELU(),
            CausalConv(c, d, 1, spatial=1),
        )
        self.quantizer = FSQ(cfg.levels)
        self.time_decoder = nn.Sequential(
            CausalConv(d, c, 1, spatial=3), _TimeBlock(c), nn.ELU(), CausalUpsample(c, c, r, spatial=3),
            _DropLeading(r - 1), _TimeBlock(c),
        )
        self.frame_decoder = Decoder2d(cfg.channels, cfg.channel_mult, cfg.blocks, c)

    @property
    def vocab_size(self) -> int:
        return self.quantizer.size

    @property
    def metadata(self) -> dict[str, Any]:
        g, c = self.cfg.grid, self.cfg
        return {**super().metadata, "image_size": c.image_size, "grid": [g, g], "codebook_size": self.quantizer.size,
                "fps": c.fps, "frames_per_token_step": c.temporal_stride,
                "tokens_per_second": c.fps / c.temporal_stride * g * g}

    # [B, T, 3, H, W] <-> [B, C, T, h, w] around the per-frame 2-D networks
    def _frames_in(self, video: Tensor) -> Tensor:
        b, t = video.shape[:2]
        z = self.frame_encoder(video.reshape(b * t, *video.shape[2:]) * 2 - 1)
        return z.reshape(b, t, *z.shape[1:]).transpose(1, 2)

    def _frames_out(self, z: Tensor) -> Tensor:
        b, _, t = z.shape[:3]
        x = self.frame_decoder(z.transpose(1, 2).reshape(b * t, z.shape[1], *z.shape[3:]))
        return (x.reshape(b, t, *x.shape[1:]) + 1) / 2

    def _check(self, video: Tensor) -> None:
        s, r = self.cfg.image_size, self.cfg.temporal_stride
        if video.dim() != 5 or video.shape[2] != 3 or video.shape[-2:] != (s, s):
            raise ValueError(f"video tokenizer expects [B, T, 3, {s}, {s}] in [0, 1], got {list(video.shape)}; "
                             "load_video resizes frames")
        if video.shape[1] > MAX_FRAMES:
            raise ValueError(f"{video.shape[1]} frames exceed the {MAX_FRAMES}-frame limit; split the video into clips")
        if not self.is_streaming and (video.shape[1] - 1) % r:
            raise ValueError(f"video tokenizer needs 1 + {r}*n frames offline, got {video.shape[1]}; trim or pad the clip")

    def forward(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """Training pass: video [B,T,3,H,W] -> (reconstruction [B,T,3,H,W], ids [B,T',h,w])."""
        values, ids = self.quantizer.quantize(self.time_encoder(self._frames_in(video)))
        return self._frames_out(self.time_decoder(values)), ids

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """video [B, T, 3, H, W] float in [0, 1] -> ids [B, T', h, w] long, ``T = 1 + r*(T'-1)``."""
        self._check(video)
        return self.quantizer.quantize(self.time_encoder(self._frames_in(video.float())))[1]

    @torch.no_grad()
    def decode(self, ids: Tensor) -> Tensor:
        """ids [B, T', h, w] -> video [B, 1 + r*(T'-1), 3, H, W] in [0, 1] (streaming: r*T' frames
        per call after the first call's 1 + r*(T'-1))."""
        if ids.dim() != 4:
            raise ValueError(f"video tokenizer decode expects ids [B, T', h, w], got {list(ids.shape)}")
        return self._frames_out(self.time_decoder(self.quantizer.values(ids.long()))).clamp(0, 1)

    def _save(self, folder: Path) -> dict[str, Any]:
        return save_weights_and_config(self, self.cfg, folder)

    @classmethod
    def _load(cls, folder: Path, state: dict[str, Any]) -> "VideoTokenizer":
        return load_weights_and_config(cls, VideoTokConfig, "video_tok", folder, state)


def load_video(path_or_folder: str | Path, image_size: int, max_frames: int = MAX_FRAMES, fps: Optional[float] = None) -> Tensor:
    """A clip -> ``[T, 3, image_size, image_size]`` float in [0, 1].

    Accepts a video file (mp4, webm, mkv, ... decoded by PyAV, :func:`omni.io.video.read_video`,
    resampled to ``fps`` Hz when given), a folder of frames (PNG/JPEG..., in natural order:
    ``frame_2`` before ``frame_10``), a ``.npy`` uint8 array ``[T, H, W, 3]`` (what
    data/build_video.py writes) or an animated GIF/WebP/APNG. Frames are resized and centre-cropped
    like :func:`omni.tokenizers.image.load_image`. The other formats store no frame rate: the caller
    must supply frames at ``video_tok.fps``. Raises ValueError (:class:`omni.io.video.VideoError` for
    video files) when the input is unreadable or holds no frame.
    """
    path = Path(path_or_folder)
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp")),
                       key=lambda p: natural_key(p.name))
        if not files:
            raise ValueError(f"{path}: folder holds no image frames (.png/.jpg/...)")
        frames = [load_image(f, image_size) for f in files[: max_frames + 1]]
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        arr, _ = read_video(path, fps=fps, max_frames=max_frames + 1)
        frames = [load_image(Image.fromarray(a), image_size) for a in arr]
    elif path.suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{path}: not a valid .npy clip ({e})") from e
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"{path}: expected uint8 [T, H, W, 3], got {arr.dtype} {list(arr.shape)}")
        frames = [load_image(Image.fromarray(np.asarray(a)), image_size) for a in arr[: max_frames + 1]]
    elif path.is_file():
        try:
            img = Image.open(path)
            frames = [load_image(f.convert("RGB"), image_size) for _, f in zip(range(max_frames + 1), ImageSequence.Iterator(img))]
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"{path}: not a readable video (use a frame folder, .npy or animated GIF/WebP): {e}") from e
    else:
        raise ValueError(f"{path}: no such video file or frame folder")
    if not frames:
        raise ValueError(f"{path}: the clip holds no frames; a video needs at least one")
    if len(frames) > max_frames:
        raise ValueError(f"{path}: more than {max_frames} frames; split it into clips")
    return torch.stack(frames)


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: ``frame_2.png`` < ``frame_10.png`` (case-insensitive)."""
    return tuple((0, int(part), len(part)) if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", name))
