"""Tiny corpora in the exact on-disk layouts of LibriSpeech, LibriTTS, VCTK 0.92, LJSpeech, Common Voice,
COCO captions and image / video folders, made from espeak-ng speech (data/build_speech.py) and
scikit-image's bundled pictures. Each layout also holds the faults real corpora have (a transcript
whose audio is missing, a corrupt file, a file nobody captioned), so the readers' skip counts are known.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import av
import numpy as np
import soundfile as sf

from omni.data.voices import espeak_voices

SENTENCES = ["the cat sat on the mat", "a quick brown fox jumps", "she sells sea shells",
             "open the window please", "it is raining today", "we walked to the park"]
PICTURES = [("astronaut", "An astronaut next to a flag."), ("chelsea", "An orange cat looking to the side."),
            ("coffee", "A cup of coffee on a saucer."), ("rocket", "A rocket on its launch pad.")]


@lru_cache(maxsize=None)
def speech(text: str, voice: int = 0) -> tuple[np.ndarray, int]:
    """(float32 samples, rate) of ``text`` spoken by espeak-ng in voice ``voice`` (data/voices.py)."""
    wav, sr = espeak_voices(4, 0)[voice % 4].synth(text)
    return wav.reshape(-1).numpy().astype(np.float32), sr


def picture(name: str, side: int = 96) -> np.ndarray:
    """A bundled skimage picture, resized to ``side`` px on its shorter side, uint8 [H, W, 3]."""
    import skimage.data
    from PIL import Image

    arr = np.asarray(getattr(skimage.data, name)())
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, -1)
    img = Image.fromarray(arr[..., :3].astype(np.uint8))
    w, h = img.size
    return np.asarray(img.resize((max(side, w * side // h), max(side, h * side // w))))


def write_audio(path: Path, text: str, voice: int = 0, fmt: str | None = None) -> None:
    wav, sr = speech(text, voice)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wav, sr, format=fmt)


def write_video(path: Path, frames: np.ndarray, fps: int) -> None:
    """uint8 frames [T, H, W, 3] (H, W even) -> an mp4 (MPEG-4) or webm (VP8/VP9) file, with PyAV."""
    codec = {".webm": "libvpx-vp9" if "libvpx-vp9" in av.codecs_available else "libvpx"}.get(path.suffix, "mpeg4")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for arr in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
        container.mux(stream.encode())


def lossless_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """H.264 in RGB at qp 0: decoding gives back the exact pixels."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=fps, options={"qp": "0"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
        for arr in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
        container.mux(stream.encode())


def moving_square(n: int, side: int = 64, colour=(255, 0, 0)) -> np.ndarray:
    """[n, side, side, 3] uint8: a square crossing a grey background left to right."""
    frames = np.full((n, side, side, 3), 90, np.uint8)
    for t in range(n):
        x = t * (side - 16) // max(1, n - 1)
        frames[t, 24:40, x : x + 16] = colour
    return frames


def librispeech(root: Path) -> Path:
    """LibriSpeech/dev-clean/SPEAKER/CHAPTER: 2 chapters; 4 good utterances, 1 transcript line without
    audio, 1 flac without transcript, 1 corrupt flac (listed)."""
    base = root / "LibriSpeech" / "dev-clean"
    lines = {("84", "121123"): [0, 1, 2], ("174", "50561"): [3, 4]}
    for (spk, ch), idx in lines.items():
        folder = base / spk / ch
        rows = []
        for k, i in enumerate(idx):
            utt = f"{spk}-{ch}-{k:04d}"
            rows.append(f"{utt} {SENTENCES[i].upper()}")
            if (spk, k) != ("84", 2):  # 84-121123-0002 is listed but missing
                write_audio(folder / f"{utt}.flac", SENTENCES[i], int(spk) % 4)
        (folder / f"{spk}-{ch}.trans.txt").write_text("\n".join(rows) + "\n")
    (base / "174" / "50561" / "174-50561-0001.flac").write_bytes(b"fLaC not really")  # corrupt
    write_audio(base / "84" / "121123" / "84-121123-0099.flac", SENTENCES[5])  # no transcript
    return root / "LibriSpeech"


def libritts(root: Path) -> Path:
    """LibriTTS/dev-clean/SPEAKER/CHAPTER/*.wav + .normalized.txt: 3 good, 1 wav without text."""
    base = root / "LibriTTS" / "dev-clean" / "1272" / "128104"
    for k, i in enumerate([0, 1, 2, 3]):
        stem = f"1272_128104_000001_{k:06d}"
        write_audio(base / f"{stem}.wav", SENTENCES[i], 1)
        if k != 3:
            (base / f"{stem}.normalized.txt").write_text(SENTENCES[i].capitalize() + ".")
            (base / f"{stem}.original.txt").write_text(SENTENCES[i])
    return root / "LibriTTS"


def vctk(root: Path) -> Path:
    """VCTK-Corpus-0.92: p225 (2 utterances, mic1 + mic2), p315 (audio, no txt folder)."""
    base = root / "VCTK-Corpus-0.92"
    for k, i in enumerate([0, 1], 1):
        for mic in ("mic1", "mic2"):
            write_audio(base / "wav48_silence_trimmed" / "p225" / f"p225_{k:03d}_{mic}.flac", SENTENCES[i], 2)
        (base / "txt" / "p225").mkdir(parents=True, exist_ok=True)
        (base / "txt" / "p225" / f"p225_{k:03d}.txt").write_text(SENTENCES[i].capitalize() + ".\n")
    write_audio(base / "wav48_silence_trimmed" / "p315" / "p315_001_mic1.flac", SENTENCES[2], 3)
    return base


def ljspeech(root: Path) -> Path:
    """LJSpeech-1.1: metadata.csv (ID|raw|normalized, a literal quote) + wavs/; 1 line without wav."""
    base = root / "LJSpeech-1.1"
    rows = ['LJ001-0001|The cat sat on the mat, "said he|The cat sat on the mat, "said he',
            "LJ001-0002|It is raining on the 2nd day|It is raining on the second day",
            "LJ001-0003|Missing audio|Missing audio"]
    write_audio(base / "wavs" / "LJ001-0001.wav", SENTENCES[0])
    write_audio(base / "wavs" / "LJ001-0002.wav", SENTENCES[4])
    (base / "metadata.csv").write_text("\n".join(rows) + "\n")
    return base


def commonvoice(root: Path) -> Path:
    """cv-corpus/en: clips/*.mp3 (written by soundfile) + validated.tsv / train.tsv; 1 listed clip missing."""
    base = root / "cv-corpus-17.0" / "en"
    header = "client_id\tpath\tsentence_id\tsentence\tsentence_domain\tup_votes\tdown_votes\tage\tgender\taccents\tvariant\tlocale\tsegment"
    rows = []
    for k, i in enumerate([0, 3]):
        name = f"common_voice_en_{1000 + k}.mp3"
        write_audio(base / "clips" / name, SENTENCES[i].capitalize() + ".", k, fmt="MP3")
        rows.append(f"client{k}\t{name}\tsid{k}\t{SENTENCES[i].capitalize()}.\t\t2\t0\tthirties\tmale\t\t\ten\t")
    rows.append("client9\tcommon_voice_en_9999.mp3\tsid9\tGone.\t\t2\t0\t\t\t\t\ten\t")
    (base / "validated.tsv").write_text("\n".join([header, *rows]) + "\n")
    (base / "train.tsv").write_text("\n".join([header, rows[0]]) + "\n")
    return base


def coco(root: Path) -> Path:
    """coco/annotations/captions_val2017.json + val2017/*.jpg: 3 captioned images (2 captions each),
    1 listed image missing, 1 image without captions."""
    from PIL import Image

    base = root / "coco"
    (base / "val2017").mkdir(parents=True)
    images, anns = [], []
    for k, (name, caption) in enumerate(PICTURES):
        file = f"{k + 1:012d}.jpg"
        images.append({"id": k + 1, "file_name": file, "height": 96, "width": 96})
        if k != 3:
            Image.fromarray(picture(name)).save(base / "val2017" / file)
        anns += [{"id": 10 * k + 1, "image_id": k + 1, "caption": caption},
                 {"id": 10 * k + 2, "image_id": k + 1, "caption": f"  A picture:  {caption.lower()}"}]
    images.append({"id": 99, "file_name": "000000000099.jpg", "height": 96, "width": 96})
    Image.fromarray(picture("camera")).save(base / "val2017" / "000000000099.jpg")
    (base / "annotations").mkdir()
    (base / "annotations" / "captions_val2017.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return base


def image_folder(root: Path) -> Path:
    """images/ + captions.jsonl: a JPEG, a PNG in a subfolder, a corrupt file (listed), one uncaptioned."""
    from PIL import Image

    base = root / "my_images"
    (base / "sub").mkdir(parents=True)
    Image.fromarray(picture("chelsea")).save(base / "cat.jpg")
    Image.fromarray(picture("coffee")).save(base / "sub" / "coffee.png")
    (base / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    Image.fromarray(picture("rocket")).save(base / "uncaptioned.jpg")
    rows = [{"file": "cat.jpg", "text": "An orange cat.", "license": "cc0"},
            {"image": "sub/coffee.png", "caption": "A cup of coffee."},
            {"file": "broken.jpg", "text": "Nothing to see."}]
    (base / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return base


def video_folder(root: Path, fps: int = 8) -> Path:
    """videos/ + captions.jsonl: an mp4 and a webm (2 s of a moving square), a corrupt mp4 (listed)."""
    base = root / "my_videos"
    write_video(base / "red.mp4", moving_square(2 * fps, colour=(255, 0, 0)), fps)
    write_video(base / "blue.webm", moving_square(2 * fps, colour=(0, 0, 255)), fps)
    (base / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    rows = [{"file": "red.mp4", "text": "A red square moves from left to right."},
            {"file": "blue.webm", "text": "A blue square moves from left to right."},
            {"file": "broken.mp4", "text": "Nothing."}]
    (base / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return base
