"""eval/demo_answers.py, the end of make demo: every spoken question through a batched streaming
session, captions and drawings, scored and written to JSON (a tiny untrained model, a stub judge)."""
import json

import pytest

from omni.config import ServingConfig
from omni.data.voices import TRAINING_FAMILIES, UNSEEN_FAMILY
from omni.eval.demo_answers import VOICE_SETS, ask_every_question, evaluate, fixed_answer_baseline
from omni.eval.intelligibility import Heard
from omni.infer.chat import OmniChat
from tests import omni_fixtures as F

one_thread = pytest.fixture(autouse=True, scope="module")(F.one_thread)


class StubJudge:
    """Hears the same sentence in every reply."""

    name, threads = "stub", 1

    def transcribe(self, wave, sample_rate):
        assert wave.dim() == 1
        return "The sky is blue!"

    def hear(self, wave, sample_rate):
        return Heard(self.transcribe(wave, sample_rate), -0.1)

    def transcribe_many(self, waves, sample_rate, desc=""):
        return [self.transcribe(w, sample_rate) for w in waves]


def test_fixed_answer_baseline():
    assert fixed_answer_baseline(["Snow is white.", "The sky is blue.", "Sky blue."]) == ("The sky is blue.", 2)


@pytest.fixture(scope="module")
def bot(tmp_path_factory):
    """A tiny untrained omni model with untrained tokenizers, replies cut at 4 frames."""
    pytest.importorskip("kokoro_onnx")
    pytest.importorskip("silero_vad")
    tok, codec, v, fmt, m = F.setup(tmp_path_factory.mktemp("tok"), max_seq_len=512)
    return OmniChat(m, fmt, codec, F.image_tokenizer(), F.video_tokenizer(), F.config(m),
                    serving=ServingConfig(max_reply_frames=4))


@pytest.mark.slow
def test_every_question_is_asked_streamed_judged_and_written(bot, tmp_path, monkeypatch):
    codec = bot.codec
    monkeypatch.setattr("omni.eval.demo_answers.Judge", lambda *args, **kwargs: StubJudge())  # the quick judge too
    result = evaluate(bot, tmp_path / "out", StubJudge(), batch=2, limit=3)  # two sessions: 2 rows, then 1
    assert json.loads((tmp_path / "out" / "answers.json").read_text()) == json.loads(json.dumps(result))
    spoken = result["spoken"]
    turns = spoken["turns"]
    assert [t["question"] for t in turns][2] == "What color is the sky?"
    assert [t["right"] for t in turns] == [False, False, True]  # the stub's sentence answers question 3 only
    assert spoken["summary"]["accuracy"] == pytest.approx(1 / 3) and spoken["summary"]["judge"] == "Whisper stub"
    # the ceiling: the preset voice speaking the 3 expected answers (the takes a corpus keeps) through the codec
    assert spoken["summary"]["ceiling_preset_voice_through_codec"]["accuracy"] == pytest.approx(1 / 3)
    assert all(t["voice"].startswith("kokoro-kumo:") for t in turns)
    # 4-frame replies end before the voice guardrail's first check (serving.guardrail_first_ms)
    assert spoken["summary"]["voice_stops"] == 0 and all(t["voice_stop_s"] is None for t in turns)
    for n, t in enumerate(turns):
        assert (tmp_path / "out" / "questions" / f"{n:02d}.wav").is_file()
        assert 0 < t["reply_s"] <= (4 * codec.hop_length + codec.cfg.vocoder_lookahead * 256) / codec.sample_rate + 1e-6
    assert result["images"]["summary"]["pictures"] == 14 and len(result["drawings"]["drawings"]) == 14
    assert (tmp_path / "out" / "drawings.png").is_file()


@pytest.mark.slow
def test_text_only_scores_the_offline_monologues(bot, tmp_path):
    result = ask_every_question(bot, None, tmp_path, limit=2, voice_set="low-pitch")
    assert result["summary"]["judge"] is None and len(result["turns"]) == 2
    assert result["summary"]["voices"] == VOICE_SETS["low-pitch"][0]
    assert all(isinstance(t["monologue"], str) and t["monologue_right"] in (True, False) for t in result["turns"])


def test_voice_sets_for_choosing_models_stay_off_the_test_family():
    test = {v.name for v in VOICE_SETS["unseen"][1](60)}
    assert all(v.family == UNSEEN_FAMILY for v in VOICE_SETS["unseen"][1](60))
    for key in ("training-families", "low-pitch"):
        voices = VOICE_SETS[key][1](60)
        assert len(voices) == 60 and not {v.name for v in voices} & test
        assert all(v.family in TRAINING_FAMILIES for v in voices)
    assert all(0.6 <= v.pitch <= 0.72 for v in VOICE_SETS["low-pitch"][1](60))
