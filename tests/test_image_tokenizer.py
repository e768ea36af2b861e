"""Image tokenizer: shapes/dtypes, FSQ ids, save/load, bad inputs, and a short training run that
reaches a stated PSNR on crops of held-out pictures."""
import argparse

import pytest
import torch
from PIL import Image

from omni.tokenizers import load_tokenizer
from omni.tokenizers.image import FSQ, ImageTokConfig, ImageTokenizer, load_image


def tiny(**kw) -> ImageTokenizer:
    torch.manual_seed(0)
    base = dict(image_size=32, channels=8, channel_mult=[1, 2], blocks=1, levels=[8, 5, 5, 5])
    base.update(kw)
    return ImageTokenizer(ImageTokConfig(**base)).eval()


def test_round_trip_shapes_and_metadata():
    tok = tiny()
    ids = tok.encode(torch.rand(3, 3, 32, 32))
    assert ids.shape == (3, 16, 16) and ids.dtype == torch.long
    assert 0 <= ids.min() and ids.max() < 1000
    out = tok.decode(ids)
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    assert tok.metadata["grid"] == [16, 16] and tok.metadata["codebook_size"] == 1000


def test_fsq_ids_and_values_agree():
    fsq = FSQ([8, 5, 3])
    values, ids = fsq.quantize(torch.randn(4, 3, 5, 5) * 3)
    assert torch.equal(fsq.values(ids), values)
    assert ids.max() < 120 and values.abs().max() <= 1
    assert len(torch.unique(fsq.quantize(torch.randn(20000, 3, 1, 1) * 4)[1])) == 120  # every code reachable


def test_save_load_round_trip(tmp_path):
    tok = tiny()
    tok.save(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    x = torch.rand(2, 3, 32, 32)
    assert isinstance(again, ImageTokenizer) and torch.equal(again.encode(x), tok.encode(x))


def test_load_image_any_mode_and_size(tmp_path):
    for mode, size in [("RGB", (50, 20)), ("L", (7, 9)), ("P", (33, 33)), ("RGBA", (100, 40)), ("I;16", (40, 64)),
                       ("CMYK", (32, 32)), ("1", (64, 31))]:
        path = tmp_path / f"x_{mode.replace(';', '')}.{'tiff' if mode in ('I;16', 'CMYK') else 'png'}"
        Image.new(mode, size).save(path)
        img = load_image(path, 32)
        assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # fully transparent -> white
    assert torch.allclose(load_image(rgba, 8), torch.ones(3, 8, 8))


def test_bad_inputs(tmp_path):
    tok = tiny()
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(tmp_path / "bad.png", 32)
    with pytest.raises(ValueError, match="no such image"):
        load_image(tmp_path / "missing.png", 32)
    with pytest.raises(ValueError, match="32x32"):
        tok.encode(torch.rand(1, 3, 40, 32))
    with pytest.raises(ValueError, match="RGB"):
        tok.encode(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="token ids"):
        tok.decode(torch.full((1, 16, 16), 1000))


@pytest.mark.slow
def test_tiny_image_tokenizer_reaches_psnr_on_held_out_pictures(tmp_path):
    """120 Trainer steps on crops of the bundled pictures: >= 20 dB PSNR on crops of pictures held out."""
    from omni.config import load_config
    from omni.data.build_images import build_image_corpus
    from omni.eval.metrics_audio import psnr
    from omni.train.tasks.image import ImageTask
    from omni.train.trainer import Trainer

    build_image_corpus(tmp_path / "images")
    cfg = load_config("image-tiny", [
        f"image_tok.data_path={tmp_path / 'images'}", "image_tok.image_size=32", "image_tok.channels=16",
        "image_tok.channel_mult=[1,2]", f"train.out_dir={tmp_path / 'run'}", "train.steps=120",
        "train.batch_size=16", "train.ckpt_every=120", "train.tensorboard=false", "train.log_every=50",
    ])
    task = ImageTask()
    last = Trainer(cfg, task, argparse.Namespace(overwrite=True)).fit()
    tok = load_tokenizer(last / "tokenizer")
    val = task.build_dataset(cfg, "val")
    x = torch.stack([val[i] for i in range(len(val))])
    score = psnr(tok.decode(tok.encode(x)), x)
    print(f"held-out PSNR {score:.2f} dB")
    assert score >= 20.0
