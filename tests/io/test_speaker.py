"""omni/io/speaker.py: speaker embeddings separate voices, and a streamed track equals the offline one."""
import pytest
import torch

from tests import omni_fixtures as F
from omni.data.voices import EspeakVoice, preset_voice
from omni.io.speaker import SpeakerEncoder, SpeakerTrack, cosine

one_thread = pytest.fixture(autouse=True, scope="module")(F.one_thread)
pytest.importorskip("resemblyzer")
pytest.importorskip("espeakng_loader")


@pytest.fixture(scope="module")
def encoder():
    return SpeakerEncoder()


def test_same_voice_close_other_voices_far(encoder):
    pytest.importorskip("onnxruntime")
    a, b = "What color is the sky? The sky is blue.", "How many legs does a dog have? A dog has four legs."
    piper = preset_voice()
    robot = EspeakVoice("en-us", "m3", 170, 50, 50)
    e = {(v.name, t): encoder.embed(*v.synth(t)) for v in (piper, robot) for t in (a, b)}
    assert all(x.shape == (256,) and abs(float(x.norm()) - 1) < 1e-4 for x in e.values())
    assert cosine(e[piper.name, a], e[piper.name, b]) >= 0.75
    assert cosine(e[robot.name, a], e[robot.name, b]) >= 0.75
    assert max(cosine(e[piper.name, s], e[robot.name, t]) for s in (a, b) for t in (a, b)) <= 0.71


def test_stream_equals_offline(encoder):
    wave, sr = EspeakVoice("en-gb-x-rp", "f3", 160, 60, 50).synth(
        "Where do penguins live? Penguins live in Antarctica, far in the south.")
    assert len(wave) > 2.5 * sr  # several windows
    track = SpeakerTrack(encoder, sr)
    step = int(0.08 * sr)
    early = None
    for i in range(0, len(wave), step):
        track.feed(wave[i : i + step])
        if early is None and i + step >= sr:  # after 1 s: one padded window, before any complete one
            early = track.embedding()
            assert torch.allclose(early, encoder.embed(wave[: i + step], sr), atol=1e-5)
    assert torch.allclose(track.embedding(), encoder.embed(wave, sr), atol=1e-5)
    assert cosine(early, track.embedding()) > 0.6


def test_silence_has_no_speaker(encoder):
    quiet = encoder.embed(torch.zeros(48_000), 24_000)
    assert float(quiet.abs().sum()) == 0 and cosine(quiet, torch.ones(256)) == 0.0
