"""Video files through PyAV (omni/io/video.py): exact frames from a lossless file, frame-rate
conversion by sample-and-hold, clear errors, and load_video / `omni.chat --video clip.mp4`."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests import corpus_fixtures as cf
from PIL import Image

from omni.io.video import VideoError, read_video
from omni.tokenizers.image import load_image
from omni.tokenizers.video import load_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (12, 16, 24, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    cf.lossless_mp4(path, frames, fps=6)
    return path, frames


def test_exact_frames_and_rate(clip):
    path, frames = clip
    got, rate = read_video(path)
    assert rate == 6 and np.array_equal(got, frames)


def test_frame_rate_conversion_holds_the_frame_on_screen(clip):
    path, frames = clip
    slow, _ = read_video(path, fps=3)  # instants 0, 1/3, ... show frames 0, 2, 4, ...
    assert np.array_equal(slow, frames[::2])
    fast, _ = read_video(path, fps=12)  # each frame shown at two instants
    assert np.array_equal(fast, np.repeat(frames, 2, axis=0))
    assert len(read_video(path, fps=12, max_frames=5)[0]) == 5
    assert np.array_equal(read_video(path, max_seconds=1.0)[0], frames[:6])


def test_errors(tmp_path):
    with pytest.raises(VideoError, match="no such video file"):
        read_video(tmp_path / "missing.mp4")
    bad = tmp_path / "bad.webm"
    bad.write_bytes(b"\x1aE\xdf\xa3 not really webm")
    with pytest.raises(VideoError, match="not a readable video"):
        read_video(bad)
    wav = tmp_path / "speech.wav"  # a container FFmpeg reads, with audio only
    cf.write_audio(wav, "hello")
    with pytest.raises(VideoError, match="no video stream"):
        read_video(wav)


def test_load_video_reads_files_at_the_tokenizer_rate(clip, tmp_path):
    path, frames = clip
    got = load_video(path, 16, fps=3)
    assert got.shape == (6, 3, 16, 16)
    # every frame gets the resize + centre crop of any other input
    assert all(torch.equal(g, load_image(Image.fromarray(f), 16)) for g, f in zip(got, frames[::2]))
    webm = tmp_path / "c.webm"
    cf.write_video(webm, cf.moving_square(8, side=32), fps=8)
    assert load_video(webm, 16, fps=8).shape == (8, 3, 16, 16)
