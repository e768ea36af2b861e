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
