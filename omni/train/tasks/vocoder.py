"""The ``vocoder`` task: adversarial fine-tuning of HiFi-GAN (omni/nn/hifigan.py) on a trained
codec's decoded mels; ``python train.py --config configs/vocoder-tiny.yaml``. The first task with two
optimisers (:meth:`omni.train.task.Task.optimizers`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from omni.config import Config, ConfigError
from omni.nn.hifigan import HOP, HiFiGAN, HiFiGANConfig, MultiPeriodDiscriminator, hifigan_mel, pretrained_hifigan
from omni.tokenizers.base import load_tokenizer
from omni.tokenizers.codec import SpeechCodec
from omni.train.checkpoint import resolve_checkpoint
from omni.train.task import Task, register_task
from omni.train.tasks.codec import speech_segments

Tensor = torch.Tensor


@dataclass
class VocoderConfig:
    """Adversarial fine-tuning of HiFi-GAN on a trained codec's decoded mels (configs/vocoder*.yaml)."""

    codec: str = "runs/codec-tiny"  # a codec tokenizer folder or a codec training run
    init: str = "universal"  # the pretrained generator to start from; "random" for a small test generator
    channels: int = 512  # generator width (512 = V1; other widths only with init: random)
    disc_width: int = 32  # multi-period discriminator width (32 = the paper's)
    mel_weight: float = 45.0  # HiFi-GAN's weights: mel L1 45, feature matching 2, adversarial 1
    feature_weight: float = 2.0


class VocoderGAN(nn.Module):
    """The generator being fine-tuned, its discriminator, and the frozen codec whose mels it voices."""

    def __init__(self, cfg: VocoderConfig, codec: SpeechCodec) -> None:
        super().__init__()
        if cfg.init == "universal":
            if cfg.channels != HiFiGANConfig().channels:
                raise ConfigError("vocoder.init=universal needs vocoder.channels=512 (the pretrained V1 shape)")
            self.generator = pretrained_hifigan()
        elif cfg.init == "random":
            self.generator = HiFiGAN(HiFiGANConfig(channels=cfg.channels))
        else:
            raise ConfigError(f"vocoder.init must be 'universal' or 'random', got {cfg.init!r}")
        self.discriminator = MultiPeriodDiscriminator(width=cfg.disc_width)
        self.codec = codec.requires_grad_(False)

    def train(self, mode: bool = True) -> "VocoderGAN":
        super().train(mode)
        self.codec.eval()  # frozen: its quantiser statistics must not move
        return self


@register_task("vocoder")
class VocoderTask(Task):
    """Fine-tune HiFi-GAN on the codec's mels against the original waveforms: least-squares GAN
    with HiFi-GAN's multi-period discriminator, feature matching and mel L1 (Kong et al. 2020). Two
    optimisers: the discriminator steps first, then the generator, on the same batch. Checkpoints
    carry ``vocoder.safetensors`` (the generator), which ``codec.vocoder`` can name."""

    def build_model(self, cfg: Config) -> nn.Module:
        self.cfg: VocoderConfig = cfg.section("vocoder")
        path = Path(self.cfg.codec)
        folder = path if (path / "tokenizer.json").exists() else resolve_checkpoint(path) / "tokenizer"
        codec = load_tokenizer(folder)
        if not isinstance(codec, SpeechCodec):
            raise ConfigError(f"vocoder.codec={path} holds a {type(codec).__name__}, not a speech codec")
        return VocoderGAN(self.cfg, codec)

    def optimizers(self, model: nn.Module) -> dict[str, list[nn.Parameter]]:
        return {"discriminator": list(model.discriminator.parameters()), "generator": list(model.generator.parameters())}

    def build_dataset(self, cfg: Config, split: str = "train") -> torch.utils.data.Dataset:
        return speech_segments(cfg, split)

    def loss(self, model: nn.Module, batch: Tensor, phase: str) -> tuple[Tensor, dict[str, float]]:
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
        v: VocoderConfig = self.cfg
        fake = model.generator(mel)
        with torch.no_grad():
            real_out = model.discriminator(real)
        fake_out = model.discriminator(fake)
        adv = sum(((1 - f) ** 2).mean() for f, _ in fake_out)
        fm = sum(F.l1_loss(a, b) for (_, fa), (_, fb) in zip(fake_out, real_out) for a, b in zip(fa, fb))
        mel_l1 = F.l1_loss(hifigan_mel(fake[:, 0]), hifigan_mel(real[:, 0]))
        loss = adv + v.feature_weight * fm + v.mel_weight * mel_l1
        return loss, {"g_adv": adv.item(), "g_fm": fm.item(), "g_mel_l1": mel_l1.item()}

    def tokens_in(self, batch: Tensor) -> int:
        return batch.shape[0] * batch.shape[-1]  # samples

    def on_save(self, model: nn.Module, cfg: Config, folder: str) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.generator.state_dict().items()},
                  str(Path(folder) / "vocoder.safetensors"))
