"""Audio I/O (omni.io.audio): formats, channel mixing, resampling, mel features, bad files."""
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from omni.io.audio import AudioError, load_audio, mel_spectrogram, resample, save_audio


def tone(freq: float, sr: int, seconds: float = 0.5) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


def test_save_load_round_trip(tmp_path):
    wav = torch.from_numpy(tone(440, 16000))[None]
    save_audio(tmp_path / "a.wav", wav, 16000)
    back = load_audio(tmp_path / "a.wav", 16000)
    assert back.shape == wav.shape and back.dtype == torch.float32
    assert (back - wav).abs().max() < 1e-3  # 16-bit quantisation


def test_stereo_is_mixed_and_8bit_is_scaled(tmp_path):
    left, right = tone(440, 16000), tone(660, 16000)
    sf.write(tmp_path / "st.wav", np.stack([left, right], 1), 16000, subtype="FLOAT")
    assert torch.allclose(load_audio(tmp_path / "st.wav", 16000)[0], torch.from_numpy((left + right) / 2), atol=1e-6)
    sf.write(tmp_path / "u8.wav", left, 16000, subtype="PCM_U8")
    assert (load_audio(tmp_path / "u8.wav", 16000)[0] - torch.from_numpy(left)).abs().max() < 0.02


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_odd_sample_rates_are_resampled(tmp_path, sr):
    sf.write(tmp_path / "x.flac", tone(440, sr), sr)
    wav = load_audio(tmp_path / "x.flac", 16000)
    assert wav.shape == (1, 8000)
    ref = torch.from_numpy(tone(440, 16000))
    assert (wav[0, 400:-400] - ref[400:-400]).abs().max() < 5e-3


def test_resample_keeps_band_and_removes_aliases():
    sr = 48000
    t = torch.arange(sr) / sr
    low, high = torch.sin(2 * math.pi * 1000 * t), torch.sin(2 * math.pi * 11000 * t)  # 11 kHz > 8 kHz Nyquist
    assert resample(low, sr, 16000).shape == (16000,)
    assert resample(low, sr, 16000)[1000:-1000].pow(2).mean() > 0.45
    assert resample(high, sr, 16000)[1000:-1000].pow(2).mean() < 1e-3
    assert torch.equal(resample(low, sr, sr), low)


def test_mel_spectrogram_shape_and_peak():
    wav = torch.from_numpy(tone(1000, 16000, 1.0))[None, None]
    mel = mel_spectrogram(wav, 16000, n_fft=1024, n_mels=80)
    assert mel.shape == (1, 1, 80, 16000 // 256 + 1)
    linear = mel_spectrogram(wav, 16000, log=False)[0, 0, :, 10]
    assert 0 < int(linear.argmax()) < 40  # 1 kHz sits in the lower half of the mel scale


def test_bad_files(tmp_path):
    with pytest.raises(AudioError, match="no such"):
        load_audio(tmp_path / "missing.wav", 16000)
    (tmp_path / "text.wav").write_text("hello, I am not audio")
    with pytest.raises(AudioError, match="not a readable audio file"):
        load_audio(tmp_path / "text.wav", 16000)
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="no samples"):
        load_audio(tmp_path / "empty.wav", 16000)
    good = tmp_path / "good.wav"
    sf.write(good, tone(440, 16000), 16000)
    (tmp_path / "cut.wav").write_bytes(good.read_bytes()[:30])  # header cut short
    with pytest.raises(AudioError):
        load_audio(tmp_path / "cut.wav", 16000)
    with pytest.raises(AudioError, match="longer than"):
        load_audio(good, 16000, max_seconds=0.1)
    with pytest.raises(AudioError, match="mono"):
        save_audio(tmp_path / "o.wav", torch.zeros(2, 10), 16000)


def _wav_with_rate(path, rate: int, seconds: float = 1.0) -> None:
    """A 16-bit mono WAV holding ``seconds`` of a 440 Hz tone, its header saying ``rate`` Hz."""
    sf.write(path, tone(440, rate, seconds), rate, subtype="PCM_16")


PEAK_SCRIPT = """
import resource, sys
from omni.io.audio import load_audio
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
wav = load_audio(sys.argv[1], 16000)
print(wav.shape[-1], (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


@pytest.mark.parametrize("rate", [16001, 44101])
def test_odd_rate_costs_bounded_memory(tmp_path, rate):
    """A 32 KB file whose header says 16001 Hz used to allocate 2 GB in the resampler (issue 19, case 3)."""
    import subprocess
    import sys

    path = tmp_path / "odd.wav"
    _wav_with_rate(path, rate)
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path)], capture_output=True, text=True, timeout=120,
                         env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    samples, grown_mib = map(int, out.stdout.split())
    assert samples == 16000
    assert grown_mib < 64, f"loading a {path.stat().st_size} B file grew the process by {grown_mib} MiB"


@pytest.mark.parametrize("rate", [8000, 11025, 16001, 22050, 32000, 44100, 44101, 48000, 96000])
def test_every_rate_gives_the_tone(tmp_path, rate):
    _wav_with_rate(tmp_path / "x.wav", rate, 0.5)
    wav = load_audio(tmp_path / "x.wav", 16000)
    assert wav.shape == (1, 8000)
    ref = torch.from_numpy(tone(440, 16000))
    assert (wav[0, 400:-400] - ref[400:-400]).abs().max() < 5e-3


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_U8"), ("WAV", "PCM_16"), ("WAV", "PCM_24"), ("WAV", "PCM_32"),
                                         ("WAV", "FLOAT"), ("WAV", "DOUBLE"), ("WAV", "ULAW"), ("AIFF", "PCM_16"),
                                         ("FLAC", "PCM_24"), ("OGG", "VORBIS"), ("OGG", "OPUS"), ("MP3", "MPEG_LAYER_III")])
def test_every_sample_format_and_container_sounds_the_same(tmp_path, fmt, subtype):
    """What a listener hears: the same tone, at the same level, whatever the encoding (lossy ones
    within their own error)."""
    rate = 48000 if subtype == "OPUS" else 44100
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(path, np.stack([tone(440, rate, 1.0)] * 2, 1), rate, format=fmt, subtype=subtype)  # stereo
    wav = load_audio(path, 16000)[0]
    ref = torch.from_numpy(tone(440, 16000, 1.0))
    assert abs(wav.shape[-1] - 16000) <= (1200 if fmt in ("MP3", "OGG") else 0)  # codec priming/padding
    rms = float(wav[2000:-2000].pow(2).mean().sqrt())
    assert abs(rms - float(ref.pow(2).mean().sqrt())) < 0.03, rms
    if fmt not in ("MP3", "OGG"):  # lossless (or mu-law) samples line up with the reference
        assert (wav[400:-400] - ref[400:-400]).abs().max() < (0.03 if subtype in ("PCM_U8", "ULAW") else 5e-3)


def test_channel_layouts_are_mixed_to_mono(tmp_path):
    chans = np.stack([tone(440, 16000) * (i % 2) for i in range(6)], 1)  # 5.1: 3 loud, 3 silent channels
    sf.write(tmp_path / "six.wav", chans, 16000, subtype="PCM_16")
    wav = load_audio(tmp_path / "six.wav", 16000)[0]
    assert (wav - torch.from_numpy(tone(440, 16000)) / 2).abs().max() < 1e-3


def test_lying_headers_are_refused_or_cost_what_is_there(tmp_path):
    good = tmp_path / "good.wav"
    _wav_with_rate(good, 16000, 0.25)
    raw = bytearray(good.read_bytes())
    # The data chunk's size field claims ~1 GB; only 8000 bytes follow: libsndfile reads what exists.
    raw[40:44] = (1 << 30).to_bytes(4, "little")
    (tmp_path / "long.wav").write_bytes(raw)
    assert load_audio(tmp_path / "long.wav", 16000).shape == (1, 4000)
    # A sample rate no recording has.
    raw = bytearray(good.read_bytes())
    raw[24:28] = (3).to_bytes(4, "little")
    (tmp_path / "rate.wav").write_bytes(raw)
    with pytest.raises(AudioError, match="sample rate"):
        load_audio(tmp_path / "rate.wav", 16000)
    with pytest.raises(AudioError):
        resample(torch.zeros(10), 0, 16000)
