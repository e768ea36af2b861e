"""Each corpus reader on a fixture in its real on-disk layout (tests/corpus_fixtures.py: espeak speech,
bundled pictures, mp3 and mp4/webm files): what it yields, the decoded shapes, and the bad files it
skips, counts and reports."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests import corpus_fixtures as cf
from omni.data.sources import SOURCES, MediaSpec, open_source, parse_source
from omni.data import build_images, build_video
from omni.data.build_speech import VAL_EVERY, main
from omni.io.audio import resample
from omni.train.datasets import ImageCrops, SpeechSegments, VideoClips


def read_all(spec: str, media: MediaSpec = MediaSpec()):
    src = open_source(spec)
    return src, list(src.read(media))


def test_librispeech(tmp_path):
    src, got = read_all(f"librispeech={cf.librispeech(tmp_path)}")
    # chapters in sorted order (174 before 84); 174-50561-0001 is corrupt, 84-121123-0002 has no flac
    assert [t for _, t, _ in got] == ["Open the window please", "The cat sat on the mat", "A quick brown fox jumps"]
    assert [m["id"] for *_, m in got] == ["174-50561-0000", "84-121123-0000", "84-121123-0001"]
    assert got[1][2]["speaker"] == "84" and got[1][2]["raw_text"] == "THE CAT SAT ON THE MAT"
    wav, sr = cf.speech(cf.SENTENCES[0], 0)
    assert got[1][0].shape[0] == 1 and abs(got[1][0].shape[1] - len(wav) * 16000 / sr) <= 1  # resampled to 16 kHz
    assert src.skipped == {"transcript without audio": 1, "audio without transcript": 1, "undecodable audio": 1}
    assert "84-121123-0002.flac" in src.report() and "84-121123-0099.flac" in src.report()
    # a split folder as root, or the split named
    assert len(list(open_source(f"librispeech:dev-clean={tmp_path / 'LibriSpeech'}").examples())) == 4
    with pytest.raises(FileNotFoundError, match="dev-clean"):
        list(open_source(f"librispeech:train-other-500={tmp_path / 'LibriSpeech'}").examples())


def test_libritts(tmp_path):
    src, got = read_all(f"libritts={cf.libritts(tmp_path)}", MediaSpec(sample_rate=24000))
    assert [t for _, t, _ in got] == ["The cat sat on the mat.", "A quick brown fox jumps.", "She sells sea shells."]
    assert got[0][2] == {"id": "1272_128104_000001_000000", "speaker": "1272", "chapter": "128104"}
    wav, sr = cf.speech(cf.SENTENCES[0], 1)
    assert abs(got[0][0].shape[1] - len(wav) * 24000 / sr) <= 1
    assert src.skipped == {"audio without transcript": 1}


def test_vctk(tmp_path):
    root = cf.vctk(tmp_path)
    src, got = read_all(f"vctk={root}")
    assert [(m["id"], m["mic"], t) for _, t, m in got] == [("p225_001", "mic1", "The cat sat on the mat."),
                                                          ("p225_002", "mic1", "A quick brown fox jumps.")]
    assert src.skipped == {"audio without transcript": 1}  # p315 has no transcripts (as in VCTK 0.92)
    assert [m["mic"] for m in (e.meta for e in open_source(f"vctk:mic2={root}").examples())] == ["mic2", "mic2"]
    with pytest.raises(ValueError, match="mic1 or mic2"):
        open_source(f"vctk:train={root}")


def test_ljspeech(tmp_path):
    src, got = read_all(f"ljspeech={cf.ljspeech(tmp_path)}", MediaSpec(sample_rate=22050))
    # the normalised column; a literal double quote does not swallow the next line
    assert [t for _, t, _ in got] == ['The cat sat on the mat, "said he', "It is raining on the second day"]
    assert got[1][2]["raw_text"] == "It is raining on the 2nd day"
    assert src.skipped == {"transcript without audio": 1}


def test_commonvoice_mp3(tmp_path):
    root = cf.commonvoice(tmp_path)
    src, got = read_all(f"commonvoice={root}")
    assert [t for _, t, _ in got] == ["The cat sat on the mat.", "Open the window please."]
    assert got[0][2]["gender"] == "male" and got[0][2]["speaker"] == "client0"
    # the mp3 decodes (soundfile) to the espeak speech it was made from, up to the codec's delay and loss
    wav, sr = cf.speech("The cat sat on the mat.", 0)
    ref = torch.from_numpy(wav)[None]
    ref = resample(ref, sr, 16000)[0]
    dec = got[0][0][0]
    assert abs(len(dec) - len(ref)) < 0.1 * 16000
    n = min(len(dec), len(ref)) - 4000
    lags = range(0, 2000, 1)  # mp3 encoders add a start delay of a few hundred samples
    best = max(float(torch.nn.functional.cosine_similarity(dec[lag : lag + n], ref[:n], dim=0)) for lag in lags)
    assert best > 0.9
    assert src.skipped == {"listed clip missing": 1}
    assert [t for _, t, _ in read_all(f"commonvoice:train={root}")[1]] == ["The cat sat on the mat."]
    with pytest.raises(FileNotFoundError, match="validated"):
        list(open_source(f"commonvoice:other={root}").examples())


def test_coco(tmp_path):
    root = cf.coco(tmp_path)
    src, got = read_all(f"coco:val2017={root}", MediaSpec(image_size=64))
    assert [t for _, t, _ in got] == [c for _, c in cf.PICTURES[:3]]
    assert got[0][2]["captions"] == ["An astronaut next to a flag.", "A picture: an astronaut next to a flag."]
    assert got[0][0].shape == (3, 64, 64) and 0 <= float(got[0][0].min()) and float(got[0][0].max()) <= 1
    assert src.skipped == {"listed image missing": 1, "image without caption": 1}
    with pytest.raises(FileNotFoundError, match="captions_val2017.json"):
        list(open_source(f"coco={root}").examples())  # default split train2017 is absent here


def test_image_text_folder(tmp_path):
    src, got = read_all(f"images={cf.image_folder(tmp_path)}", MediaSpec(image_size=32))
    assert [(t, m["id"]) for _, t, m in got] == [("An orange cat.", "cat"), ("A cup of coffee.", "coffee")]
    assert got[0][2]["license"] == "cc0" and got[0][0].shape == (3, 32, 32)
    assert src.skipped == {"undecodable image": 1, "image without caption": 1}


def test_video_folder_mp4_and_webm(tmp_path):
    src, got = read_all(f"videos={cf.video_folder(tmp_path, fps=8)}", MediaSpec(image_size=32, fps=4))
    assert [t for _, t, _ in got] == ["A red square moves from left to right.", "A blue square moves from left to right."]
    for (clip, _, _), channel in zip(got, (0, 2)):
        assert clip.shape == (8, 3, 32, 32)  # 2 s resampled from 8 to 4 frames/s
        # the square's centre (centroid of its colour) moves right, frame after frame
        strength = (clip[:, channel] - clip[:, 1]).clamp(min=0).sum(1)  # [T, W]
        xs = (strength * torch.arange(32)).sum(1) / strength.sum(1)
        assert bool((xs.diff() > 0).all()) and float(xs[-1] - xs[0]) > 18
    assert src.skipped == {"undecodable video": 1}


def test_bad_source_specs(tmp_path):
    assert parse_source("coco:val2017=/data/coco") == ("coco", "val2017", Path("/data/coco"))
    with pytest.raises(ValueError, match="known: .*librispeech"):
        parse_source("libri=/x")
    with pytest.raises(ValueError, match="NAME=PATH"):
        parse_source("librispeech")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        open_source(f"ljspeech={tmp_path / 'nope'}")
    with pytest.raises(FileNotFoundError, match="metadata.csv"):
        list(open_source(f"ljspeech={tmp_path}").examples())
    assert sorted(SOURCES) == ["coco", "commonvoice", "images", "librispeech", "libritts", "ljspeech", "vctk", "videos"]


def test_iterating_a_source_decodes_at_default_settings(tmp_path):
    src = open_source(f"images={cf.image_folder(tmp_path)}")
    media = [m for m, _, _ in src]
    assert [tuple(m.shape) for m in media] == [(3, 256, 256)] * 2
    assert np.isfinite(torch.stack(media).numpy()).all()


def test_codec_corpus_from_sources(tmp_path):
    """data/build_speech.py --from: codec.data_path filled from speech sources, read by the codec task."""
    out = tmp_path / "speech"
    main(["--config", "codec-tiny", "--out", str(out), "--from", f"librispeech={cf.librispeech(tmp_path)}",
          "--from", f"commonvoice={cf.commonvoice(tmp_path)}"])
    rows = [l for l in (out / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and VAL_EVERY > 5  # 3 LibriSpeech + 2 Common Voice utterances, bad ones skipped
    assert '"text": "Open the window please"' in rows[0] and '"speaker": "commonvoice:client1"' in rows[-1]
    seg = SpeechSegments(out, "train", 22050, 11025)  # the codec's rate (HiFi-GAN's 22.05 kHz)
    assert len(seg) > 10 and seg[0].shape == (1, 11025)
    with pytest.raises(ValueError, match="holds image, not audio"):
        main(["--config", "codec-tiny", "--out", str(out), "--from", f"images={cf.image_folder(tmp_path)}"])


def test_image_and_video_tokenizer_corpora_from_sources(tmp_path):
    """data/build_images.py / build_video.py --from: image_tok / video_tok data_path filled from sources."""
    out = tmp_path / "images"
    build_images.main(["--out", str(out), "--from", f"coco:val2017={cf.coco(tmp_path)}", "--from",
                       f"images={cf.image_folder(tmp_path)}", "--side", "48"])
    assert len(list((out / "train").glob("*.png"))) == 5  # 3 COCO + 2 folder pictures; the bad ones skipped
    crops = ImageCrops(out, "train", 32, n=4)
    assert crops[0].shape == (3, 32, 32)
    vids = tmp_path / "clips"
    build_video.main(["--out", str(vids), "--from", f"videos={cf.video_folder(tmp_path)}", "--frames", "5",
                      "video_tok.fps=8", "video_tok.image_size=32"])
    clips = VideoClips(vids, "train", 5, 32)
    assert len(clips) == 6 and clips[0].shape == (5, 3, 32, 32)  # 2 videos x 16 frames -> 3 clips of 5 each
    with pytest.raises(ValueError, match="holds image, not video"):
        build_video.main(["--out", str(vids), "--from", f"images={tmp_path / 'my_images'}"])
