"""The ``codec`` task: trains the speech codec (omni/tokenizers/codec.py) on the utterances
data/build_speech.py wrote; ``python train.py --config configs/codec-tiny.yaml``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from omni.config import Config
from omni.tokenizers.codec import CodecConfig, SpeechCodec
from omni.train.datasets import SpeechSegments
from omni.train.task import TokenizerTask, register_task

Tensor = torch.Tensor


def speech_segments(cfg: Config, split: str) -> SpeechSegments:
    """Crops of ``codec.segment_seconds`` (whole code frames) of the speech corpus ``codec.data_path``."""
    c: CodecConfig = cfg.section("codec")
    frames = max(1, round(c.segment_seconds * c.sample_rate / c.hop_length))
    return SpeechSegments(c.data_path, split, c.sample_rate, frames * c.hop_length)


@register_task("codec")
class CodecTask(TokenizerTask):
    """Fit the codec's encoder and codebooks to the training speech (:meth:`SpeechCodec.fit`: PCA
    and residual k-means), then train its decoder: L1 between the decoded and the input's log-mels
    (vocoder scale, floored). The vocoder is fixed; fine-tune it on the trained codec's mels with
    the ``vocoder`` task. With ``--resume`` or ``train.finetune_from`` (a run, step or shipped codec
    folder) nothing is fitted: encoder and codebooks come from those weights, so the tokens stay the
    same and only the decoder trains on."""

    tokenizer_cls, section = SpeechCodec, "codec"

    def fit_to_data(self, codec: SpeechCodec, dataset: torch.utils.data.Dataset) -> None:
        wav = torch.stack([dataset[i] for i in range(len(dataset))])
        stats = codec.fit(wav)
        print(f"codec fitted on {wav.shape[0] * wav.shape[-1] / codec.sample_rate / 60:.1f} min of speech "
              f"({stats['vectors']} vectors): PCA keeps {100 * stats['variance_kept']:.1f} % of the variance; "
              "k-means mean squared residual by level " + " ".join(f"{e:.3f}" for e in stats["kmeans_mse"]))

    def build_dataset(self, cfg: Config, split: str = "train") -> torch.utils.data.Dataset:
        return speech_segments(cfg, split)

    def loss(self, model: nn.Module, batch: Tensor) -> tuple[Tensor, dict[str, float]]:
        c: CodecConfig = model.cfg
        n_q = None
        if model.training:  # quantiser dropout: some examples decode from their first n ~ U{1..K} levels
            k = c.num_codebooks
            drop = torch.rand(batch.shape[0], device=batch.device) < c.quantizer_dropout
            n_q = torch.where(drop, torch.randint(1, k + 1, drop.shape, device=batch.device), k)
        out = model(batch, n_q)
        loss = F.l1_loss(out.mel, out.target)
        return loss, {"mel_l1": loss.item()}

    def tokens_in(self, batch: Tensor) -> int:
        return batch.shape[0] * batch.shape[-1]  # samples
