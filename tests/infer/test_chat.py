"""Any-to-any through OmniChat and `python -m omni.chat`: image in, image out, video in, speech out,
and clear errors for bad inputs (silence, corrupt audio, huge image, unsupported video)."""

import pytest
import torch
from PIL import Image as PILImage

from omni.infer.chat import OmniChat, main
from omni.config import ServingConfig
from omni.conversation import Audio, ConversationFormat, Image, Message, Text, Video
from tests import corpus_fixtures as cf
from tests import omni_fixtures as F
from omni.io.audio import save_audio

one_thread = pytest.fixture(autouse=True, scope="module")(F.one_thread)
CAPTION, VIDEO_TEXT = "a photo of a cat.", "the quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def bot(tmp_path_factory):
    """An OmniChat whose tiny model memorised: draw -> image, image -> caption, video -> text, text -> speech."""
    tok = F.text_tokenizer(tmp_path_factory.mktemp("tok"))
    codec, image_tok, video_tok = F.codec(), F.image_tokenizer(), F.video_tokenizer()
    v = F.vocab(tok, codec)
    fmt = ConversationFormat(tok, v)
    m = F.model(v, seed=2)
    g = torch.Generator().manual_seed(0)
    picture = torch.rand(3, 16, 16, generator=g)
    clip = torch.rand(5, 3, 16, 16, generator=g)
    drawn = torch.randint(0, v.image_codes, v.image_grid, generator=g)
    spoken = torch.randint(0, v.audio_codes, (v.audio_codebooks, 8), generator=g)
    convs = [
        [Message("user", "the cat sat on the mat."), Message("assistant", Image(drawn))],
        [Message("user", [Image(image_tok.encode(picture[None])[0]), Text("describe the video please.")]),
         Message("assistant", CAPTION)],
        [Message("user", [Video(video_tok.encode(clip[None])[0]), Text("describe the video please.")]),
         Message("assistant", VIDEO_TEXT)],
        [Message("user", "hello there"), Message("assistant", Audio(spoken, text="hello there"))],
    ]
    assert F.memorise(m, fmt, convs, steps=150, lr=5e-3) < 0.05
    # the untrained codec speaks no one's voice: serve without the voice guardrail (tests/infer/test_guardrail.py)
    b = OmniChat(m, fmt, codec, image_tok, video_tok, F.config(m), serving=ServingConfig(voice_guardrail=False))
    return b, {"picture": picture, "clip": clip, "drawn": drawn, "spoken": spoken, "tok": tok, "v": v}


def test_image_out_is_a_valid_image(bot):
    b, d = bot
    r = b.chat([{"role": "user", "content": "the cat sat on the mat."}], reply_in_speech=False)
    assert len(r.images) == 1
    img = r.images[0]
    assert img.shape == (3, 16, 16) and img.dtype == torch.float32 and 0 <= float(img.min()) <= float(img.max()) <= 1
    assert torch.equal([p for p in r.reply.parts if isinstance(p, Image)][0].codes, d["drawn"])
    assert torch.allclose(img, b.image_tok.decode(d["drawn"][None])[0])
    # a token budget that ends inside the image: the image is finished all the same
    short = b.chat([{"role": "user", "content": "the cat sat on the mat."}], reply_in_speech=False, max_new_tokens=2)
    assert len(short.images) == 1 and torch.equal(short.images[0], img) and short.reply.truncated


def test_image_and_video_in(bot, tmp_path):
    b, d = bot
    r = b.chat([{"role": "user", "content": [{"type": "image", "image": d["picture"]},
                                             {"type": "text", "text": "describe the video please."}]}])
    assert r.text == CAPTION and r.audio is None
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, f in enumerate(d["clip"]):
        PILImage.fromarray((f.permute(1, 2, 0) * 255).round().byte().numpy()).save(frames / f"{i:03d}.png")
    r = b.chat([{"role": "user", "content": [{"type": "video", "path": frames},
                                             {"type": "text", "text": "describe the video please."}]}])
    assert r.text == VIDEO_TEXT


def test_speech_out(bot):
    b, d = bot
    r = b.chat([Message("user", "hello there")], reply_in_speech=True)
    assert r.text == "hello there"
    assert r.audio is not None and r.audio.shape == (d["spoken"].shape[1] * b.codec.hop_length,)
    assert torch.allclose(r.audio, b.codec.decode(d["spoken"][None])[0, 0], atol=1e-5)


def test_bad_inputs_give_clear_errors(bot, tmp_path):
    b, _ = bot
    with pytest.raises(ValueError, match="silent"):
        b.audio_part(torch.zeros(16000))
    bad_wav = tmp_path / "corrupt.wav"
    bad_wav.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage garbage")
    with pytest.raises(ValueError, match="not a readable audio file"):
        b.audio_part(bad_wav)
    huge = tmp_path / "huge.png"
    PILImage.new("RGB", (17_000, 4)).save(huge)
    with pytest.raises(ValueError, match="refused"):
        b.image_part(huge)
    mp4 = tmp_path / "clip.mp4"
    mp4.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    with pytest.raises(ValueError, match="not a readable video"):
        b.video_part(mp4)
    with pytest.raises(ValueError, match="unknown content type"):
        b.chat([{"role": "user", "content": [{"type": "smell", "path": "x"}]}])
    with pytest.raises(ValueError, match="end with a user message"):
        b.chat([Message("assistant", "hi")])


def test_cli(bot, tmp_path, capsys):
    b, d = bot
    ckpt = tmp_path / "step"
    F.write_checkpoint(b, d["v"], d["tok"], ckpt)
    png = tmp_path / "x.png"
    PILImage.fromarray((d["picture"].permute(1, 2, 0) * 255).round().byte().numpy()).save(png)
    main(["--checkpoint", str(ckpt), "--image", str(png), "--text", "describe the video please.", "--out", str(tmp_path / "a")])
    # the PNG round trip moves pixels by < 1/255: the caption must survive it
    assert (tmp_path / "a" / "reply.txt").read_text().strip() == CAPTION
    main(["--checkpoint", str(ckpt), "--text", "the cat sat on the mat.", "--speech", "no", "--out", str(tmp_path / "b")])
    assert PILImage.open(tmp_path / "b" / "image_0.png").size == (16, 16)
    main(["--checkpoint", str(ckpt), "--text", "hello there", "--speech", "yes", "--out", str(tmp_path / "c")])
    assert (tmp_path / "c" / "reply.wav").is_file()
    silent = tmp_path / "silent.wav"
    save_audio(silent, torch.zeros(1, 8000), 16000)
    with pytest.raises(SystemExit, match="silent"):
        main(["--checkpoint", str(ckpt), "--audio", str(silent), "--out", str(tmp_path / "d")])
    mp4 = tmp_path / "clip.mp4"
    mp4.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    with pytest.raises(SystemExit, match="not a readable video"):
        main(["--checkpoint", str(ckpt), "--video", str(mp4), "--out", str(tmp_path / "e")])
    # a real mp4 (lossless H.264, at the video tokenizer's frame rate) is read with PyAV
    frames = (d["clip"].permute(0, 2, 3, 1) * 255).round().byte().numpy()
    cf.lossless_mp4(tmp_path / "real.mp4", frames, fps=b.video_tok.cfg.fps)
    main(["--checkpoint", str(ckpt), "--video", str(tmp_path / "real.mp4"), "--text", "describe the video please.",
          "--out", str(tmp_path / "f")])
    assert (tmp_path / "f" / "reply.txt").read_text().strip() == VIDEO_TEXT
    # A fresh process imports only what `python -m omni.chat` imports: every saved tokenizer class
    # (the text one included) must be loadable from there.
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "omni.chat", "--checkpoint", str(ckpt), "--text", "the cat sat on the mat.",
                           "--speech", "no", "--out", str(tmp_path / "f")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "f" / "reply.txt").is_file()
