"""Image tokenizer: shapes/dtypes, FSQ ids, save/load, bad inputs, and a short training run that
reaches a stated PSNR on crops of held-out pictures."""
import argparse

import pytest
import torch
from PIL import Image

from omni.tokenizers import load_tokenizer
from omni.tokenizers.image import FSQ, ImageTokConfig, ImageTokenizer, load_image
from omni.config import load_config
from omni.data.build_images import build_image_corpus
from omni.eval.metrics_audio import psnr
from omni.train.tasks.image import ImageTask
from omni.train.trainer import Trainer


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


def _mean(path, size=16):
    return float(load_image(path, size).mean())


def test_every_mode_looks_as_a_viewer_shows_it(tmp_path):
    """Issue 19, case 4: mid-grey 16-bit PNG and a [0, 1] float TIFF used to load black."""
    import numpy as np

    grey16 = np.full((20, 30), 32768, np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode in ("I;16", "I")
    assert abs(_mean(tmp_path / "g16.png") - 0.5) < 0.01
    Image.fromarray(np.full((20, 30), 0.5, np.float32), "F").save(tmp_path / "f.tiff")
    assert abs(_mean(tmp_path / "f.tiff") - 0.5) < 0.01
    Image.fromarray(np.full((20, 30), 2.0, np.float32), "F").save(tmp_path / "f2.tiff")  # out of range: clipped
    assert _mean(tmp_path / "f2.tiff") == 1.0
    Image.fromarray(np.full((20, 30), 16384, np.int32), "I").save(tmp_path / "i.tiff")
    assert abs(_mean(tmp_path / "i.tiff") - 0.25) < 0.01
    Image.new("LA", (20, 20), (0, 0)).save(tmp_path / "la.png")  # black, fully transparent -> white
    assert _mean(tmp_path / "la.png") == 1.0
    Image.new("LA", (20, 20), (0, 255)).save(tmp_path / "la_opaque.png")
    assert _mean(tmp_path / "la_opaque.png") == 0.0
    pal = Image.new("P", (20, 20), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0])
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)  # the transparent palette entry -> white
    assert _mean(tmp_path / "p.png") == 1.0
    Image.new("CMYK", (20, 20), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")  # no ink: white
    assert _mean(tmp_path / "cmyk.jpg") > 0.98
    Image.new("LAB", (20, 20), (100, 128, 128)).save(tmp_path / "lab.tiff")  # L = 100/255 of white, neutral
    lab = load_image(tmp_path / "lab.tiff", 8)
    assert (lab.amax() - lab.amin()) < 0.02 and 0.3 < float(lab.mean()) < 0.5
    for mode in ("1", "L", "RGB", "RGBX", "YCbCr", "HSV", "I;16B", "RGBa", "La", "PA"):
        img = load_image(Image.new(mode, (12, 9)), 8)
        assert img.shape == (3, 8, 8) and torch.isfinite(img).all() and 0 <= img.min() and img.max() <= 1, mode


def test_exif_orientation_is_applied(tmp_path):
    # Left half red, right half blue; stored rotated with Orientation=6 (viewer rotates 90° clockwise).
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    shown = load_image(tmp_path / "rot.jpg", 20)  # viewer: 40 wide, 20 high again; centre square
    upright = load_image(img, 20)
    assert (shown - upright).abs().mean() < 0.05


def test_thin_strip_costs_output_sized_memory(tmp_path):
    """A 113-byte 1 x 16384 PNG took 4.7 s and +830 MiB at image size 128 (issue 19, case 4)."""
    import subprocess
    import sys

    Image.new("L", (1, 16384), 200).save(tmp_path / "strip.png")
    Image.new("RGB", (16000, 3), (10, 200, 30)).save(tmp_path / "wide.png")
    # 4800 x 3600 JPEG: 52 MB decoded in full; Pillow's DCT scaling decodes it at 1/8 (600 x 450).
    Image.linear_gradient("L").resize((4800, 3600)).convert("RGB").save(tmp_path / "big.jpg", quality=80)
    script = ("import resource, sys, time\nfrom omni.tokenizers.image import load_image\n"
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\nt = time.perf_counter()\n"
              "for p in sys.argv[1:]:\n    x = load_image(p, 128)\n"
              "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", script, *(str(tmp_path / n) for n in ("strip.png", "wide.png", "big.jpg"))],
                         capture_output=True, text=True, timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    grown_mib, seconds = out.stdout.split()
    assert int(grown_mib) < 32 and float(seconds) < 1.0, out.stdout
    assert torch.allclose(load_image(tmp_path / "strip.png", 128), torch.full((3, 128, 128), 200 / 255))

