"""The ``image`` task: trains the image tokenizer (omni/tokenizers/image.py) on random crops of the
pictures data/build_images.py wrote; ``python train.py --config configs/image-tiny.yaml``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from omni.config import Config
from omni.tokenizers.image import ImageTokConfig, ImageTokenizer
from omni.train.datasets import ImageCrops
from omni.train.task import TokenizerTask, register_task

Tensor = torch.Tensor


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
