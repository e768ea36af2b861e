"""Video tokenizer: streaming (temporal part and whole) equals offline bit for bit, shapes, the
first frame encoded alone, save/load, load_video formats, bad inputs, corpus clips."""
import numpy as np
import pytest
import torch
from PIL import Image

from omni.tokenizers import load_tokenizer
from omni.tokenizers.video import VideoTokConfig, VideoTokenizer, load_video, natural_key
from omni.data.build_video import build_video_corpus
from omni.train.datasets import VideoClips


def tiny() -> VideoTokenizer:
    torch.manual_seed(0)
    cfg = VideoTokConfig(image_size=16, channels=8, channel_mult=[1, 2], blocks=1, latent_channels=16,
                         levels=[8, 5, 5, 5], temporal_stride=4, fps=8)
    return VideoTokenizer(cfg).eval()


def test_shapes_metadata_and_first_frame_alone():
    tok = tiny()
    video = torch.rand(2, 9, 3, 16, 16)
    ids = tok.encode(video)
    assert ids.shape == (2, 3, 8, 8) and ids.dtype == torch.long
    out = tok.decode(ids)
    assert out.shape == video.shape and out.dtype == torch.float32
    assert tok.metadata["tokens_per_second"] == 8 / 4 * 64
    # token step 0 depends on frame 0 only
    other = video.clone()
    other[:, 1:] = torch.rand_like(other[:, 1:])
    assert torch.equal(tok.encode(other)[:, 0], ids[:, 0])


def test_streaming_equals_offline_bit_for_bit():
    tok = tiny()
    video = torch.rand(2, 13, 3, 16, 16)
    ids, out = tok.encode(video), tok.decode(tok.encode(video))
    z = tok._frames_in(video)
    with torch.no_grad():
        latents = tok.time_encoder(z)
        with tok.streaming(2):  # the temporal part alone: frame 0, then 4 frames per call
            parts = [tok.time_encoder(z[:, :, :1])] + [tok.time_encoder(z[:, :, i:i + 4]) for i in range(1, 13, 4)]
    assert torch.equal(torch.cat(parts, 2), latents)
    with tok.streaming(2):
        s_ids = torch.cat([tok.encode(video[:, :1])] + [tok.encode(video[:, i:i + 4]) for i in range(1, 13, 4)], 1)
    with tok.streaming(2):
        s_out = torch.cat([tok.decode(ids[:, i:i + 1]) for i in range(ids.shape[1])], 1)
    assert torch.equal(s_ids, ids)
    assert torch.equal(s_out, out)


def test_save_load_round_trip(tmp_path):
    tok = tiny()
    tok.save(tmp_path / "v")
    again = load_tokenizer(tmp_path / "v")
    video = torch.rand(1, 5, 3, 16, 16)
    assert isinstance(again, VideoTokenizer) and torch.equal(again.encode(video), tok.encode(video))


def test_load_video_formats(tmp_path):
    clip = (np.random.default_rng(0).random((5, 24, 30, 3)) * 255).astype(np.uint8)
    np.save(tmp_path / "c.npy", clip)
    (tmp_path / "frames").mkdir()
    for i, f in enumerate(clip):
        Image.fromarray(f).save(tmp_path / "frames" / f"{i:03d}.png")
    Image.fromarray(clip[0]).save(tmp_path / "c.gif", save_all=True, append_images=[Image.fromarray(f) for f in clip[1:]])
    for src in ("c.npy", "frames", "c.gif"):
        v = load_video(tmp_path / src, 16)
        assert v.shape == (5, 3, 16, 16) and 0 <= v.min() and v.max() <= 1
    assert torch.equal(load_video(tmp_path / "c.npy", 16), load_video(tmp_path / "frames", 16))


def test_bad_inputs(tmp_path):
    tok = tiny()
    with pytest.raises(ValueError, match="1 \\+ 4\\*n frames"):
        tok.encode(torch.rand(1, 6, 3, 16, 16))
    with pytest.raises(ValueError, match="expects"):
        tok.encode(torch.rand(1, 5, 3, 20, 16))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image frames"):
        load_video(tmp_path / "empty", 16)
    np.save(tmp_path / "f.npy", np.zeros((3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        load_video(tmp_path / "f.npy", 16)
    (tmp_path / "x.mp4").write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="not a readable video"):
        load_video(tmp_path / "x.mp4", 16)


def test_corpus_clips(tmp_path):
    counts = build_video_corpus(tmp_path / "video", image_size=16, frames=9, clips=4)
    assert counts == {"train": 3, "val": 1}
    ds = VideoClips(tmp_path / "video", "train", frames=9, image_size=16)
    clip = ds[0]
    assert clip.shape == (9, 3, 16, 16)
    assert (clip[1:] - clip[:-1]).abs().mean() > 0  # the camera or a shape moves


def test_frames_in_natural_order_and_empty_clips(tmp_path):
    """Issue 19, case 5: frame_1 .. frame_12 were read 1, 10, 11, 12, 2, ...; a 0-frame .npy crashed."""
    (tmp_path / "frames").mkdir()
    for i in range(1, 13):  # frame i is a flat grey of level 20*i
        Image.new("RGB", (8, 8), (20 * i,) * 3).save(tmp_path / "frames" / f"frame_{i}.png")
    v = load_video(tmp_path / "frames", 8)
    levels = [round(float(f.mean()) * 255 / 20) for f in v]
    assert levels == list(range(1, 13))
    np.save(tmp_path / "empty.npy", np.zeros((0, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="no frames"):
        load_video(tmp_path / "empty.npy", 8)


def test_natural_key():
    names = ["f10.png", "F2.png", "f1.png", "f02b.png", "a.png", "f100.png"]
    assert sorted(names, key=natural_key) == ["a.png", "f1.png", "F2.png", "f02b.png", "f10.png", "f100.png"]
