"""The ``codec`` task: trains the speech codec (omni/tokenizers/codec.py) on the utterances
data/build_speech.py wrote; ``python train.py --config configs/codec-tiny.yaml``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from omni.config import Config
from omni.io.audio import mel_spectrogram
from omni.tokenizers.codec import CodecConfig, SpeechCodec
from omni.train.datasets import SpeechSegments
from omni.train.task import TokenizerTask, register_task

Tensor = torch.Tensor


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
