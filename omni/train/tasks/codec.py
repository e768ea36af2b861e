"""Training tasks for the tokenizers: ``python train.py --config configs/codec-tiny.yaml`` (or
image-tiny, video-tiny; ``--task codec|image|video``). The shared Trainer runs the loop; each task
supplies the model, a map-style dataset over the corpus its data/ builder wrote, and the loss.
``on_save`` writes ``tokenizer/`` beside every checkpoint, loadable with
``omni.tokenizers.load_tokenizer``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from torch import nn

from omni.config import Config
from omni.io.audio import mel_spectrogram
from omni.train.task import Task, register_task
from omni.tokenizers.codec import CodecConfig, SpeechCodec
from omni.tokenizers.image import ImageTokConfig, ImageTokenizer
from omni.tokenizers.video import VideoTokConfig, VideoTokenizer

Tensor = torch.Tensor


def _require(folder: Path, what: str, builder: str) -> None:
    if not folder.exists():
        raise FileNotFoundError(f"{folder} does not exist: build the {what} corpus first with `python {builder}`")


class TokenizerTask(Task):
    """Common part: the model is ``tokenizer_cls(cfg.section(section))``; checkpoints carry ``tokenizer/``."""

    tokenizer_cls: type
    section: str

    def build_model(self, cfg: Config) -> nn.Module:
        return self.tokenizer_cls(cfg.section(self.section))

    def on_save(self, model: nn.Module, cfg: Config, folder: str) -> None:
        model.save(Path(folder) / "tokenizer")


# ---- speech ------------------------------------------------------------------------------------
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


def multiscale_mel_loss(recon: Tensor, target: Tensor, sample_rate: int, n_ffts: list[int], n_mels: int) -> Tensor:
    """Mean over STFT sizes of L1 between log-mel spectrograms of ``[B, 1, S]`` waveforms.

    Log magnitudes weigh quiet and loud bands alike (a linear-magnitude term would be dominated by
    the few loudest bins); the number of mel bins is capped at n_fft/8 so small FFTs get no empty bands.
    """
    total = recon.new_zeros(())
    for n_fft in n_ffts:
        bins = min(n_mels, n_fft // 8)
        total = total + F.l1_loss(mel_spectrogram(recon, sample_rate, n_fft, n_mels=bins),
                                  mel_spectrogram(target, sample_rate, n_fft, n_mels=bins))
    return total / len(n_ffts)


@register_task("codec")
class CodecTask(TokenizerTask):
    tokenizer_cls, section = SpeechCodec, "codec"

    def build_dataset(self, cfg: Config, split: str = "train") -> torch.utils.data.Dataset:
        c: CodecConfig = cfg.section("codec")
        frames = max(1, round(c.segment_seconds * c.sample_rate / c.hop_length))
        return SpeechSegments(c.data_path, split, c.sample_rate, frames * c.hop_length)

    def loss(self, model: nn.Module, batch: Tensor) -> tuple[Tensor, dict[str, float]]:
        c: CodecConfig = model.cfg
        k = c.num_codebooks
        n_q = None
        if model.training and c.noise_db:
            low, high = c.noise_db
            db = torch.empty(batch.shape[0], 1, 1, device=batch.device).uniform_(low, high)
            batch = batch + torch.randn_like(batch) * 10 ** (db / 20)
        if model.training:  # quantiser dropout: some examples decode from their first n ~ U{1..K} levels
            drop = torch.rand(batch.shape[0], device=batch.device) < c.quantizer_dropout
            n_q = torch.where(drop, torch.randint(1, k + 1, drop.shape, device=batch.device), k)
        out = model(batch, n_q)
        mel = multiscale_mel_loss(out.recon, batch, c.sample_rate, c.mel_n_ffts, c.mel_bins)
        wave = F.l1_loss(out.recon, batch)
        loss = mel + c.waveform_weight * wave  # FSQ has no codebook, hence no commitment loss
        metrics = {"mel": mel.item(), "wave_l1": wave.item()}
        if c.spectral_weight:
            # The decoder's log magnitudes against the input's, frame for frame: a direct target the
            # decoder meets long before its phases are coherent enough for the mel loss to show it.
            # Decoder frame t covers [t, t + 4) hops = the encoder's causal STFT frame t + 3.
            target = out.input_log_mag[..., 3:]
            log_mag = out.spectrum[:, : target.shape[1], :-3]
            spectral = F.l1_loss(log_mag, target)
            loss = loss + c.spectral_weight * spectral
            metrics["spectral"] = spectral.item()
        return loss, metrics

    def tokens_in(self, batch: Tensor) -> int:
        return batch.shape[0] * batch.shape[-1]  # samples


# ---- images ------------------------------------------------------------------------------------
class ImageCrops(torch.utils.data.Dataset):
    """``n`` random square crops (scale, position, flip) of the split's images -> ``[3, S, S]`` in [0,1].

    Crop i is a pure function of (seed, i), so the dataset is deterministic and resumable.
    """

    def __init__(self, folder: str | Path, split: str, image_size: int, n: int, seed: int = 0) -> None:
        from omni.data.build_images import load_split

        _require(Path(folder) / split, "image", "data/build_images.py --config <image config>")
        self.images = load_split(folder, split)
        self.image_size, self.n, self.seed = image_size, n, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Tensor:
        from omni.data.build_images import random_crop

        rng = np.random.default_rng([self.seed, i])
        return random_crop(self.images[rng.integers(len(self.images))], self.image_size, rng)


def reconstruction_loss(recon: Tensor, target: Tensor) -> tuple[Tensor, dict[str, float]]:
    """L1 + MSE on pixels in [0, 1]; reports PSNR (dB) of the clamped reconstruction."""
    mse = F.mse_loss(recon, target)
    loss = F.l1_loss(recon, target) + mse
    psnr = -10 * torch.log10(F.mse_loss(recon.detach().clamp(0, 1), target).clamp(min=1e-10))
    return loss, {"mse": mse.item(), "psnr": psnr.item()}


@register_task("image")
class ImageTask(TokenizerTask):
    tokenizer_cls, section = ImageTokenizer, "image_tok"

    def build_dataset(self, cfg: Config, split: str = "train") -> torch.utils.data.Dataset:
        c: ImageTokConfig = cfg.section("image_tok")
        n = c.crops_per_epoch if split == "train" else max(64, c.crops_per_epoch // 50)
        return ImageCrops(c.data_path, split, c.image_size, n, seed=0 if split == "train" else 1)

    def loss(self, model: nn.Module, batch: Tensor) -> tuple[Tensor, dict[str, float]]:
        return reconstruction_loss(model(batch)[0], batch)

    def tokens_in(self, batch: Tensor) -> int:
        return batch.shape[0]  # images


# ---- video -------------------------------------------------------------------------------------
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


@register_task("video")
class VideoTask(ImageTask):
    tokenizer_cls, section = VideoTokenizer, "video_tok"

    def build_dataset(self, cfg: Config, split: str = "train") -> torch.utils.data.Dataset:
        c: VideoTokConfig = cfg.section("video_tok")
        return VideoClips(c.data_path, split, c.clip_frames, c.image_size)

    def tokens_in(self, batch: Tensor) -> int:
        return batch.shape[0] * batch.shape[1]  # frames
