"""omni/infer/guardrail.py: the voice guardrail stops a reply whose voice leaves the preset one (also
when it switches mid-stream, in a session driven by a scripted fake model stream), lets the preset
voice through, honours the serving knobs, and can be switched off."""
import hashlib
import logging

import pytest
import torch
from safetensors.torch import save_file

from omni.config import ConfigError, ServingConfig
from omni.data.voices import EspeakVoice, preset_voice, synth_at
from omni.infer.chat import OmniChat
from omni.infer.guardrail import CODEC_REFERENCE_SHA256, VoiceGuardrail, load_reference, reference_path
from omni.infer.session import SpeechSession
from omni.tokenizers.codec import SHIPPED_CODEC
from tests import omni_fixtures as F

one_thread = pytest.fixture(autouse=True, scope="module")(F.one_thread)
pytest.importorskip("resemblyzer")
pytest.importorskip("espeakng_loader")
pytest.importorskip("onnxruntime")

SR = 22_050
HOP = 1792  # one codec frame, 81.3 ms
PRESET_TEXT = "The sky is blue, and the grass is green. A dog has four legs, and a cat likes to sleep."
# a switched voice fills the window after window_ms, and is checked within every_ms more
LAG = (ServingConfig.guardrail_window_ms + ServingConfig.guardrail_every_ms) / 1000
OTHER_TEXT = "Water freezes when it is cold. Fish live in the sea, and birds can fly."
# The served threshold (0.75) is chosen for speech through the shipped codec against its own reference
# (docs/benchmarks.md, "Voice guardrail"). These tests feed clean speech, judged against the
# clean-speech reference: there Piper's sampled noise moves PRESET_TEXT's check at 1.38 s between 0.72
# and 0.82 (below 0.75 in 9 of 55 samples), while OTHER_TEXT's voice scores at most 0.46. The tests
# judge near the middle of that gap; the served threshold is measured by eval/voice_guardrail.py.
CLEAN_THRESHOLD = 0.6


@pytest.fixture(scope="module")
def waves():
    """(preset voice reply, another voice's reply) at 22.05 kHz."""
    preset = synth_at(preset_voice(), PRESET_TEXT, SR)
    other = synth_at(EspeakVoice("en-gb-x-rp", "f3", 160, 60, 50), OTHER_TEXT, SR)
    return preset, other


def guard(**serving):
    return VoiceGuardrail.from_serving(ServingConfig(**{"guardrail_threshold": CLEAN_THRESHOLD, **serving}), SR)


def test_reference_ships_and_matches_its_hash():
    ref = load_reference()
    assert ref.shape == (256,) and abs(float(ref.norm()) - 1) < 1e-3


def test_reference_through_a_codec(tmp_path, caplog):
    """The shipped codec's weights map to the shipped reference through it (sha256-checked); another
    codec folder's own reference is used when written for its weights, refused when written for
    others, and without one the clean-speech reference serves, with a warning."""
    path, digest = reference_path(SHIPPED_CODEC)
    assert path == SHIPPED_CODEC / "preset_voice.safetensors" and digest == CODEC_REFERENCE_SHA256
    shipped = load_reference(SHIPPED_CODEC)
    assert abs(float(shipped.norm()) - 1) < 1e-3 and not torch.equal(shipped, load_reference())
    folder = F.codec().save(tmp_path / "codec")
    with caplog.at_level(logging.WARNING, logger="omni.infer.guardrail"):
        assert torch.equal(load_reference(folder), load_reference())
    assert "--write-reference --codec" in caplog.text
    own = torch.nn.functional.normalize(torch.randn(256), dim=0)
    weights = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    save_file({"embedding": own}, str(folder / "preset_voice.safetensors"), metadata={"codec_sha256": weights})
    assert torch.equal(load_reference(folder), own)
    save_file({"embedding": own}, str(folder / "preset_voice.safetensors"), metadata={"codec_sha256": "0" * 64})
    with pytest.raises(ValueError, match="other codec weights"):
        load_reference(folder)


def test_preset_voice_passes_other_voice_stopped_within_a_second(waves):
    preset, other = waves
    g = guard()
    assert g.first_stop(preset, HOP) is None
    stop = g.first_stop(other, HOP)
    assert stop is not None and stop / SR <= 1.0


def test_voice_switched_mid_stream_is_stopped_per_row(waves, caplog):
    """Two rows streamed frame by frame: row 0 speaks the preset voice throughout, row 1 switches to
    another voice after 2.5 s; only row 1 stops, within window + period (LAG) of the switch, and stays
    stopped."""
    preset, other = waves
    switch = int(2.5 * SR) // HOP * HOP
    n = min(len(preset), switch + len(other)) // HOP * HOP
    rows = torch.stack([preset[:n], torch.cat([preset[:switch], other])[:n]])
    g = guard()
    stopped_at = {}
    with caplog.at_level(logging.WARNING, logger="omni.infer.guardrail"), g.streaming(2):
        for start in range(0, n, HOP):
            stop = g(rows[:, None, start : start + HOP], torch.ones(2, dtype=torch.bool))
            for b in stop.nonzero()[:, 0].tolist():
                assert b not in stopped_at, "a row is stopped once"
                stopped_at[b] = start
        assert g.stopped.tolist() == [False, True]
        g.reset_streaming(torch.tensor([False, True]))  # the next reply of row 1 starts afresh
        assert g.stopped.tolist() == [False, False]
    assert list(stopped_at) == [1]
    assert switch < stopped_at[1] <= switch + LAG * SR
    assert "voice guardrail stopped row 1" in caplog.text


def test_knobs_are_honoured(waves):
    preset, other = waves
    g = guard(guardrail_window_ms=800, guardrail_every_ms=960, guardrail_threshold=0.5, guardrail_first_ms=2000)
    assert (g.window, g.every, g.first, g.threshold) == (round(0.8 * SR), round(0.96 * SR), 2 * SR, 0.5)
    checks = []
    with g.streaming(1):
        for start in range(0, 5 * SR // HOP * HOP, HOP):
            g(preset[None, start : start + HOP], torch.ones(1, dtype=torch.bool))
            if bool(g.state.checked[0]):
                checks.append(start + HOP)
    # the first check on the frame that completes 2 s of output, then one on the first frame that
    # completes each 960 ms more
    assert checks[0] == 25 * HOP and len(checks) == 4 and all(b - a == 12 * HOP for a, b in zip(checks, checks[1:]))
    assert guard(guardrail_threshold=-1.0).first_stop(other, HOP) is None  # no cosine is below -1
    for bad in ({"guardrail_every_ms": 0}, {"guardrail_window_ms": -1}, {"guardrail_threshold": 1.5}, {"guardrail_first_ms": -1}):
        with pytest.raises(ConfigError, match="guardrail"):
            ServingConfig(**bad).validate()


def test_off_switch():
    assert guard(voice_guardrail=False) is None


# ---- in a session, with a scripted fake model stream ---------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return F.setup(tmp_path_factory.mktemp("tok"))


def scripted(codec, monkeypatch, rows):
    """Make the codec's decoder play ``rows`` [B, samples], one frame per call, whatever the codes:
    the model's audio is scripted (an untrained model stands in for the rest of the stream)."""
    played = [0]

    def decode(codes):
        i = played[0]
        played[0] += codes.shape[-1] * HOP
        return rows[:, None, i : i + codes.shape[-1] * HOP]

    monkeypatch.setattr(codec, "decode", decode)


@pytest.mark.parametrize("on", [True, False])
def test_session_stops_a_switched_voice_and_keeps_the_monologue(env, waves, monkeypatch, on):
    tok, codec, v, fmt, m = env
    preset, other = waves
    frames = 50
    switch = 30 * HOP
    rows = torch.stack([preset[: frames * HOP], torch.cat([preset[:switch], other])[: frames * HOP]])
    scripted(codec, monkeypatch, rows)
    serving = ServingConfig(max_reply_frames=frames, voice_guardrail=on, guardrail_threshold=CLEAN_THRESHOLD)
    with SpeechSession(m, codec, fmt, 2, serving=serving, min_reply_frames=frames) as s:
        outs = list(s.feed(torch.randn(2, 1, 3 * HOP) * 0.1, end_turn=True)) + list(s.reply())
        history = [s.history(b) for b in range(2)]
    assert (s.guardrail is not None) == on
    speaking = torch.stack([o.speaking for o in outs])
    stops = [(i, b) for i, o in enumerate(outs) for b, name in o.events if name == "voice_stop"]
    assert all(any(name == "reply_end" and b == r for o in outs for b, name in o.events) for r in range(2))
    assert int(speaking[:, 0].sum()) == frames  # the preset voice is never stopped
    if not on:
        assert not stops and int(speaking[:, 1].sum()) == frames
        return
    (tick, row), = stops
    played = int(speaking[:, 1].sum())
    assert row == 1 and switch <= played * HOP <= switch + LAG * SR
    after = outs[tick:]
    assert not any(o.speaking[1] for o in after) and not any(o.audio[1].any() for o in after)
    # the row goes on with its monologue to the end of the reply: its tokens keep coming (one per
    # frame it no longer plays), and the history holds the whole reply
    assert sum(int(o.tokens[1]) >= 0 for o in after) == frames - played
    assert history[1][-1].content[0].codes.shape[1] > played  # (the last position is still pending)


def test_barge_in_after_a_voice_stop_keeps_only_what_was_heard(env, waves, monkeypatch):
    tok, codec, v, fmt, m = env
    preset, other = waves
    rows = torch.cat([preset[: 30 * HOP], other])[None]
    scripted(codec, monkeypatch, rows)
    frames = (30 * HOP + len(other)) // HOP  # the reply outlasts the stop
    with SpeechSession(m, codec, fmt, 1, serving=ServingConfig(max_reply_frames=frames, guardrail_threshold=CLEAN_THRESHOLD), min_reply_frames=frames) as s:
        outs = list(s.feed(torch.randn(1, 1, 3 * HOP) * 0.1, end_turn=True))
        while not any(name == "voice_stop" for o in outs for _, name in o.events):
            outs.append(s.tick(torch.zeros(1, 1, HOP)))
        outs += [s.tick(torch.zeros(1, 1, HOP)) for _ in range(3)]  # the monologue goes on, silently
        cut = s.tick(torch.zeros(1, 1, HOP), interrupt=torch.tensor([True]))
        spoken = [msg for msg in s.history(0) if msg.role == "assistant"][-1].content[0]
    assert (0, "barge_in") in cut.events
    assert spoken.interrupted and spoken.codes.shape[1] == sum(int(o.speaking[0]) for o in outs)


def test_chat_cuts_the_spoken_reply_where_the_voice_leaves(env, waves, monkeypatch):
    tok, codec, v, fmt, m = env
    preset, other = waves
    reply = torch.cat([preset[: 30 * HOP], other])
    monkeypatch.setattr(codec, "decode", lambda codes: reply[None, None])
    for on in (True, False):
        bot = OmniChat(m, fmt, codec, None, None, F.config(m), serving=ServingConfig(voice_guardrail=on, guardrail_threshold=CLEAN_THRESHOLD))
        r = bot.chat([{"role": "user", "content": "the cat sat on the mat."}], reply_in_speech=True, max_new_tokens=4)
        if on:
            assert r.voice_stop_s is not None and 30 * HOP / SR < r.voice_stop_s <= 30 * HOP / SR + LAG
            assert r.audio.shape[-1] == round(r.voice_stop_s * SR)
        else:
            assert r.voice_stop_s is None and r.audio.shape[-1] == reply.shape[-1]
