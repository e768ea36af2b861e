"""The ``vocoder`` task: HiFi-GAN (omni/nn/hifigan.py) trained on a trained codec's decoded mels,
either fine-tuned adversarially against the recordings (``python train.py --config
configs/vocoder-tiny.yaml``; the first task with two optimisers, :meth:`omni.train.task.Task.optimizers`)
or distilled into a narrower generator that regresses the pretrained V1's waveform on the same mels
(``configs/vocoder-small.yaml``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from omni.config import Config, ConfigError
from omni.nn.hifigan import (HOP, HiFiGAN, HiFiGANConfig, MultiPeriodDiscriminator, hifigan_mel, pretrained_hifigan,
                             prune_hifigan)
from omni.tokenizers.base import load_tokenizer
from omni.tokenizers.codec import SpeechCodec
from omni.train.checkpoint import resolve_checkpoint
from omni.train.task import Task, register_task
from omni.train.tasks.codec import speech_segments

Tensor = torch.Tensor


@dataclass
class VocoderConfig:
    """HiFi-GAN trained on a trained codec's decoded mels (configs/vocoder*.yaml)."""

    codec: str = "runs/codec-tiny"  # a codec tokenizer folder or a codec training run
    # The generator to start from: "universal" (the pretrained V1), "pruned" (V1 cut to `channels` by
    # omni.nn.hifigan.prune_hifigan on the first `prune_batches` batches' mels), "random".
    init: str = "universal"
    channels: int = 512  # generator width (512 = V1)
    prune_batches: int = 16
    # Distillation: regress the pretrained V1's waveform on the same mels (mel L1 + waveform L1, one
    # optimiser, no discriminator) instead of the adversarial fine-tuning against the recordings.
    distill: bool = False
    wave_weight: float = 10.0  # waveform L1 weight when distilling (V1's output has the same phase)
    disc_width: int = 32  # multi-period discriminator width (32 = the paper's)
    mel_weight: float = 45.0  # HiFi-GAN's weights: mel L1 45, feature matching 2, adversarial 1
    feature_weight: float = 2.0


class VocoderGAN(nn.Module):
    """The generator being trained, its discriminator (adversarial) or the frozen V1 it imitates
    (distillation), and the frozen codec whose mels it voices."""

    def __init__(self, cfg: VocoderConfig, codec: SpeechCodec) -> None:
        super().__init__()
        self.codec = codec.requires_grad_(False)
        if cfg.init == "universal":
            if cfg.channels != HiFiGANConfig().channels:
                raise ConfigError("vocoder.init=universal needs vocoder.channels=512 (the pretrained V1 shape); "
                                  "use init: pruned for a narrower generator")
            self.generator = pretrained_hifigan()
        elif cfg.init in ("pruned", "random"):  # pruned: VocoderTask.fit_to_data cuts V1 into it
            self.generator = HiFiGAN(HiFiGANConfig(channels=cfg.channels))
        else:
            raise ConfigError(f"vocoder.init must be 'universal', 'pruned' or 'random', got {cfg.init!r}")
        if cfg.distill:
            self.teacher = pretrained_hifigan().requires_grad_(False)
        else:
            self.discriminator = MultiPeriodDiscriminator(width=cfg.disc_width)

    def train(self, mode: bool = True) -> "VocoderGAN":
        super().train(mode)
        self.codec.eval()  # frozen: its quantiser statistics must not move
        if hasattr(self, "teacher"):
            self.teacher.eval()
        return self


def codec_mels(codec: SpeechCodec, segments: torch.utils.data.Dataset, batch: int, stop: Optional[int] = None,
               device: Optional[torch.device] = None) -> Iterator[Tensor]:
    """The codec's decoded log-mels ``[B, 80, frames]`` of the first ``stop`` (default all) speech
    segments, ``batch`` at a time, computed on ``device`` (default: where the segments are)."""
    stop = len(segments) if stop is None else min(stop, len(segments))
    with torch.no_grad():
        for start in range(0, stop, batch):
            wav = torch.stack([segments[i] for i in range(start, min(stop, start + batch))])
            yield codec.decode_mel(codec.encode(wav.to(device) if device is not None else wav))


class TeacherTargets(torch.utils.data.Dataset):
    """Distillation pairs, computed once (the teacher is frozen): item i -> (the codec's log-mels of
    speech segment i ``[80, frames]``, the teacher's waveform for them ``[1, frames * 256]``). Holds
    every pair in memory (4 bytes a sample: 11 min of speech at 22.05 kHz = 58 MB)."""

    def __init__(self, segments: torch.utils.data.Dataset, codec: SpeechCodec, teacher: HiFiGAN, batch: int = 16) -> None:
        self.mels, self.waves = [], []
        mels = codec_mels(codec, segments, batch, device=teacher.conv_pre.weight.device)
        with torch.no_grad():
            for mel in tqdm(mels, total=-(-len(segments) // batch), desc="teacher waveforms", unit="batch"):
                self.mels.extend(mel.cpu())
                self.waves.extend(teacher(mel).cpu())

    def __len__(self) -> int:
        return len(self.mels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.mels[i], self.waves[i]


@register_task("vocoder")
class VocoderTask(Task):
    """Train HiFi-GAN on the codec's mels. Adversarial (default): against the original waveforms,
    least-squares GAN with HiFi-GAN's multi-period discriminator, feature matching and mel L1 (Kong
    et al. 2020); two optimisers, the discriminator steps first, then the generator, on the same
    batch. Distillation (``vocoder.distill``): a narrower generator learns the pretrained V1's
    waveform for the same mels (mel L1 + waveform L1; the target has V1's phase, so plain regression
    works without a discriminator); one optimiser. Checkpoints carry ``vocoder.safetensors`` (the
    generator), which ``codec.vocoder`` can name."""

    def build_model(self, cfg: Config) -> nn.Module:
        self.cfg: VocoderConfig = cfg.section("vocoder")
        path = Path(self.cfg.codec)
        folder = path if (path / "tokenizer.json").exists() else resolve_checkpoint(path) / "tokenizer"
        codec = load_tokenizer(folder)
        if not isinstance(codec, SpeechCodec):
            raise ConfigError(f"vocoder.codec={path} holds a {type(codec).__name__}, not a speech codec")
        self.model = VocoderGAN(self.cfg, codec)
        self.full_cfg = cfg
        return self.model

    def fit_to_data(self, model: nn.Module, dataset: torch.utils.data.Dataset) -> None:
        """``init: pruned``: the generator becomes V1 cut to ``vocoder.channels`` on the codec's mels of
        the first ``prune_batches`` training batches (:func:`omni.nn.hifigan.prune_hifigan`). The
        Trainer calls it for a fresh run only; a resumed or fine-tuned run loads its generator instead."""
        if self.cfg.init != "pruned":
            return
        batch = self.full_cfg.section("train").batch_size
        mels = list(codec_mels(model.codec, speech_segments(self.full_cfg, "train"), batch, self.cfg.prune_batches * batch))
        v1 = model.teacher if self.cfg.distill else pretrained_hifigan()
        model.generator.load_state_dict(prune_hifigan(v1, self.cfg.channels, mels).state_dict())

    def optimizers(self, model: nn.Module) -> Optional[dict[str, list[nn.Parameter]]]:
        if self.cfg.distill:
            return {"generator": list(model.generator.parameters())}
        return {"discriminator": list(model.discriminator.parameters()), "generator": list(model.generator.parameters())}

    def build_dataset(self, cfg: Config, split: str = "train") -> torch.utils.data.Dataset:
        segments = speech_segments(cfg, split)
        return TeacherTargets(segments, self.model.codec, self.model.teacher) if self.cfg.distill else segments

    def loss(self, model: nn.Module, batch: Tensor | tuple[Tensor, Tensor], phase: str) -> tuple[Tensor, dict[str, float]]:
        v: VocoderConfig = self.cfg
        if v.distill:
            mel, target = batch
            fake = model.generator(mel)
            mel_l1 = F.l1_loss(hifigan_mel(fake[:, 0]), hifigan_mel(target[:, 0]))
            wave_l1 = F.l1_loss(fake, target)
            return v.mel_weight * mel_l1 + v.wave_weight * wave_l1, {"mel_l1": mel_l1.item(), "wave_l1": wave_l1.item()}
        with torch.no_grad():
            mel = model.codec.decode_mel(model.codec.encode(batch))
        # Causal mel frames voice the input one hop late (omni.nn.hifigan.hifigan_mel): align the target.
        real = F.pad(batch, (HOP, 0))[..., : batch.shape[-1]]
        if phase == "discriminator":
            with torch.no_grad():
                fake = model.generator(mel)
            loss = sum(((1 - r) ** 2).mean() + (f**2).mean()
                       for (r, _), (f, _) in zip(model.discriminator(real), model.discriminator(fake)))
            return loss, {"d_loss": loss.item()}
        fake = model.generator(mel)
        with torch.no_grad():
            real_out = model.discriminator(real)
        fake_out = model.discriminator(fake)
        adv = sum(((1 - f) ** 2).mean() for f, _ in fake_out)
        fm = sum(F.l1_loss(a, b) for (_, fa), (_, fb) in zip(fake_out, real_out) for a, b in zip(fa, fb))
        mel_l1 = F.l1_loss(hifigan_mel(fake[:, 0]), hifigan_mel(real[:, 0]))
        loss = adv + v.feature_weight * fm + v.mel_weight * mel_l1
        return loss, {"g_adv": adv.item(), "g_fm": fm.item(), "g_mel_l1": mel_l1.item()}

    def tokens_in(self, batch: Tensor | tuple[Tensor, Tensor]) -> int:
        wav = batch[1] if isinstance(batch, (tuple, list)) else batch
        return wav.shape[0] * wav.shape[-1]  # samples

    def on_save(self, model: nn.Module, cfg: Config, folder: str) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.generator.state_dict().items()},
                  str(Path(folder) / "vocoder.safetensors"))
