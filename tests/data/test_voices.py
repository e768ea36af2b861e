"""data/voices.py and data/spoken_qa.py: the Piper and Kokoro front ends, the voice family split,
the spoken QA file."""
import json
import time
from dataclasses import dataclass

import pytest
import torch

from tests import omni_fixtures as F
from omni.data.build_speech import build_speech_corpus
from omni.data.spoken_qa import load_spoken_qa
from omni.data import voices as voices_module
from omni.data.voices import (KOKORO_LOW_AWAY_FROM, KOKORO_LOW_PITCH, KOKORO_LOW_STEP, KOKORO_LOW_TOWARDS, KOKORO_TRAINING_STYLES,
                              KOKORO_UNSEEN_STYLE, Kokoro, KokoroVoice, Piper, PRESET_FAMILY,
                              TRAINING_FAMILIES, UNSEEN_FAMILY, VoiceUnavailable, espeak, kokoro, kokoro_model_path, piper,
                              kokoro_voices, preset_voice, Voice, synth_at, training_voices, unseen_voices)

one_thread = pytest.fixture(autouse=True, scope="module")(F.one_thread)
pytest.importorskip("espeakng_loader")


def _loud(wave: torch.Tensor) -> float:
    return float(wave.pow(2).mean().sqrt())


def test_espeak_ipa_keeps_clause_punctuation():
    assert espeak().phonemes("Hello") == "həlˈoʊ"
    ph = espeak().phonemes("Hi, there! It costs 3.5 dollars.")
    assert ph.count(",") == 1 and ph.count("!") == 1 and ph.endswith(".")
    assert "pɔɪnt" in ph  # "3.5" is a number, not a clause break


def test_a_missing_speech_engine_names_its_package(monkeypatch):
    monkeypatch.setattr(voices_module, "onnxruntime", None)
    with pytest.raises(VoiceUnavailable, match="pip install onnxruntime"):
        Piper()
    monkeypatch.setattr(voices_module, "KokoroOnnx", None)
    with pytest.raises(VoiceUnavailable, match="kokoro-onnx"):
        Kokoro()


def test_piper_phoneme_ids_and_synthesis():
    pytest.importorskip("onnxruntime")
    p = piper()
    m = p.id_map
    # BOS, pad, then each phoneme of "həlˈoʊ" followed by the pad, then EOS (ids from the voice's JSON)
    expected = m["^"] + m["_"] + [i for ch in "həlˈoʊ" for i in m[ch] + m["_"]] + m["$"]
    assert p.phoneme_ids("Hello") == expected == [1, 0, 20, 0, 59, 0, 24, 0, 120, 0, 27, 0, 100, 0, 2]
    assert p.phoneme_ids("Hello?")[-3:] == m["?"] + m["_"] + m["$"]
    voice = preset_voice()
    assert voice.family == PRESET_FAMILY
    voice.synth("Hi.")  # first run builds the session's kernels
    t = time.perf_counter()
    wave, sr = voice.synth("The sky is blue.")
    took = time.perf_counter() - t
    assert sr == 22_050 and wave.dtype == torch.float32 and wave.dim() == 1
    assert 0.6 < len(wave) / sr < 3.0 and _loud(wave) > 0.02 and float(wave.abs().max()) <= 1.0
    assert took < 3.0 * len(wave) / sr  # measured RTF ~0.15 on one loaded core


@pytest.mark.slow
def test_kokoro_styles_blends_speed_and_pitch():
    pytest.importorskip("kokoro_onnx")
    assert kokoro_model_path().stat().st_size > 50e6  # assembled and sha256-checked once
    engine = kokoro()
    assert set(KOKORO_TRAINING_STYLES) < set(engine.styles)
    plain = KokoroVoice(((KOKORO_TRAINING_STYLES[0], 1.0),))
    wave, sr = plain.synth("The sky is blue.")
    assert sr == 24_000 and wave.dim() == 1 and 0.6 < len(wave) / sr < 3.0 and _loud(wave) > 0.02
    assert float(wave.abs().max()) <= 0.95 + 1e-6
    blend = KokoroVoice(((KOKORO_TRAINING_STYLES[0], 0.5), (KOKORO_TRAINING_STYLES[1], 0.5)))
    mix = 0.5 * engine.styles[KOKORO_TRAINING_STYLES[0]] + 0.5 * engine.styles[KOKORO_TRAINING_STYLES[1]]
    assert torch.allclose(torch.from_numpy(blend.style_vector()), torch.from_numpy(mix))
    fast = KokoroVoice(plain.styles, speed=1.25).synth("The sky is blue.")[0]
    high = KokoroVoice(plain.styles, pitch=1.2).synth("The sky is blue.")[0]
    assert len(fast) < 0.9 * len(wave)  # faster speech is shorter
    assert 0.85 < len(high) / len(wave) < 1.15  # pitch moves, duration stays


def test_families_keep_the_unseen_voice_out_of_training():
    train = training_voices(300, seed=3)
    assert {v.family for v in train} == set(TRAINING_FAMILIES)
    assert len({v.name for v in train}) > 250  # a variety of speakers, not a few repeated
    assert not any(isinstance(v, KokoroVoice) and KOKORO_UNSEEN_STYLE in dict(v.styles) for v in train)
    unseen = unseen_voices(20)
    assert {v.family for v in unseen} == {UNSEEN_FAMILY} and PRESET_FAMILY not in TRAINING_FAMILIES
    assert all(dict(v.styles) == {KOKORO_UNSEEN_STYLE: 1.0} for v in unseen)
    assert not {v.name for v in unseen} & {v.name for v in train}
    # Training Kokoro voices (female styles) also go lower, by resampling; the unseen ones keep 0.9-1.1.
    pitches = [v.pitch for v in train if isinstance(v, KokoroVoice)]
    assert min(pitches) < 0.7 and max(pitches) <= 1.1
    assert all(0.9 <= v.pitch <= 1.1 for v in unseen)
    # A share of the Kokoro blends are natural lower voices: extrapolated away from one style, not resampled far.
    low = [v for v in train if isinstance(v, KokoroVoice) and min(w for _, w in v.styles) < 0]
    kokoro_blends = [v for v in train if isinstance(v, KokoroVoice) and len(v.styles) > 1]
    assert 0.1 < len(low) / len(kokoro_blends) < 0.4
    for v in low:
        weights = dict(v.styles)
        assert set(weights) == {*KOKORO_LOW_TOWARDS, KOKORO_LOW_AWAY_FROM} and abs(sum(weights.values()) - 1) < 0.02
        assert KOKORO_LOW_STEP[0] - 1 - 0.01 <= -weights[KOKORO_LOW_AWAY_FROM] <= KOKORO_LOW_STEP[1] - 1 + 0.01
        assert KOKORO_LOW_PITCH[0] <= v.pitch <= KOKORO_LOW_PITCH[1]
    # Without a low share (the evaluation sets), the draws are the plain blends they always were.
    assert all(min(w for _, w in v.styles) > 0 for v in kokoro_voices(100, seed=5))


def test_spoken_qa_file(tmp_path):
    qa = load_spoken_qa()
    assert 40 <= len(qa) <= 80 and len({x.question for x in qa}) == len({x.answer for x in qa}) == len(qa)
    assert all(x.question.endswith("?") and len(x.question.split()) <= 10 and len(x.answer.split()) <= 10 for x in qa)
    assert {(x.behaviour, x.split) for x in qa} == {("qa", "train")}
    bad = tmp_path / "qa.jsonl"
    bad.write_text(json.dumps({"question": "Why?", "answer": "Because."}) + "\n" + json.dumps({"question": "Why?"}) + "\n")
    with pytest.raises(ValueError, match="qa.jsonl:2"):
        load_spoken_qa(bad)


@pytest.mark.slow
def test_speech_corpus_voices(tmp_path):
    """Training speech in training families and the preset voice; val in the unseen family only."""
    pytest.importorskip("kokoro_onnx")
    build_speech_corpus(tmp_path, sample_rate=16_000, minutes=0.6, val_fraction=0.15, speakers=4, source="generated",
                        real=False, kokoro_share=0.25, preset_share=0.3)
    rows = {s: [json.loads(line) for line in (tmp_path / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "val")}
    assert {r["family"] for r in rows["train"]} <= {*TRAINING_FAMILIES, PRESET_FAMILY}
    assert {r["family"] for r in rows["val"]} == {UNSEEN_FAMILY}


def test_neural_voices_are_synthesised_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNI_CACHE", str(tmp_path))
    calls = []

    @dataclass(frozen=True)
    class Counted(Voice):
        family: str = "kokoro"

        @property
        def name(self):
            return "counted"

        def synth(self, text):
            calls.append(text)
            return torch.linspace(-0.5, 0.5, 2400), 24_000

    first = synth_at(Counted(), "hello", 12_000)
    again = synth_at(Counted(), "hello", 12_000)
    other = synth_at(Counted(), "hello", 24_000)  # another rate is another entry
    assert calls == ["hello", "hello"] and torch.equal(first, again) and first.shape == (1200,)
    assert other.shape == (2400,) and len(list(tmp_path.glob("speech/*/*.npy"))) == 2
