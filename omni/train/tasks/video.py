"""The ``video`` task: trains the video tokenizer (omni/tokenizers/video.py) on the clips
data/build_video.py wrote; ``python train.py --config configs/video-tiny.yaml``. Loss and metrics are
the image task's."""
from __future__ import annotations

import torch

from omni.config import Config
from omni.tokenizers.video import VideoTokConfig, VideoTokenizer
from omni.train.datasets import VideoClips
from omni.train.task import register_task
from omni.train.tasks.image import ImageTask

Tensor = torch.Tensor


@register_task("video")
class VideoTask(ImageTask):
    tokenizer_cls, section = VideoTokenizer, "video_tok"

    def build_dataset(self, cfg: Config, split: str = "train") -> torch.utils.data.Dataset:
        c: VideoTokConfig = cfg.section("video_tok")
        return VideoClips(c.data_path, split, c.clip_frames, c.image_size)

    def tokens_in(self, batch: Tensor) -> int:
        return batch.shape[0] * batch.shape[1]  # frames
