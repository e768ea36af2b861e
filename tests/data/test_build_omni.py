"""data/build_omni.py -> streamed shard rows -> the omni task's loss and checkpoint side files, at a tiny scale."""
import json
import random

import pytest
import torch

from tests import omni_fixtures as F
from omni.config import load_config
from omni.conversation import MOD_AUDIO, MOD_IMAGE, MOD_VIDEO
from omni.data.build_omni import Builder, build_omni_corpus, clearest_take, takes_report, tokenizer_folder
from omni.data.spoken_qa import SAFETY_FILE, SAMPLE_LINES, load_spoken_qa
from omni.data.voices import ACCENT_WORDS, Voice, espeak_voices, synth_at
from omni.eval.intelligibility import Heard
from omni.train.shards import read_shard_index
from omni.train.tasks.omni import OmniTask

one_thread = pytest.fixture(autouse=True, scope="module")(F.one_thread)


def test_corpus_rows_and_loss(tmp_path):
    pytest.importorskip("espeakng_loader")
    cfg = load_config("configs/omni-tiny.yaml", [
        f"data.path={tmp_path / 'corpus'}", f"tokenizer.path={tmp_path / 'text'}", "tokenizer.vocab_size=600",
        f"omni.codec={tmp_path / 'none'}", f"omni.image_tokenizer={tmp_path / 'none'}",
        f"omni.video_tokenizer={tmp_path / 'none'}", "data.seq_len=256", "model.dim=64", "model.n_layers=1",
        "model.ffn_dim=128", "omni.depth_dim=32", "omni.depth_layers=1", "omni.depth_ffn_dim=64",
    ])
    with pytest.raises(FileNotFoundError, match="omni.codec=.*no trained codec"):
        build_omni_corpus(cfg, scale=0.005)  # untrained tokenizers only when asked for
    build_omni_corpus(cfg, scale=0.005, untrained=True)
    index = read_shard_index(cfg.data.path)
    assert [len(v) for v in index["splits"].values()] == [1, 1]  # the one-shard case of the format
    assert set(index["tasks"]) == {"text", "s2s", "safety", "asr", "tts", "caption", "draw", "video"}
    assert set(index["tokenizer_sources"].values()) == {"untrained"}  # saved with the corpus all the same
    assert index["assistant_voice"] == "piper:en_US-joe-medium"
    task = OmniTask()
    model = task.build_model(cfg)
    assert model.decoder.vocab_size == index["vocab"]["text_size"] + 1000 + 125 + 3  # rounded to 64: 1728
    batches = task.build_dataset(cfg).batches()
    rows = [next(batches) for _ in range(4)]  # 4 x 8 rows of 257 positions
    mods = torch.cat([r["modality"].flatten() for r in rows])
    assert all((mods == m).any() for m in (MOD_AUDIO, MOD_IMAGE, MOD_VIDEO))
    row = {k: v[0] for k, v in rows[0].items()}
    assert row["tokens"].shape == (257,) and row["audio"].shape == (257, 8)
    assert bool(((row["audio"][:, 0] >= 0) == (row["modality"] == MOD_AUDIO)).all())
    loss, metrics = task.loss(model, {k: v[:2] for k, v in rows[0].items()})
    loss.backward()
    assert torch.isfinite(loss) and {"loss_text", "loss_audio", "loss_monologue", "loss_image", "audio_acc"} <= set(metrics)
    task.on_save(model, cfg, str(tmp_path / "step"))
    assert json.loads((tmp_path / "step" / "vocab.json").read_text()) == index["vocab"]
    for name in ("text", "codec", "image", "video"):
        assert (tmp_path / "step" / "tokenizers" / name / "tokenizer.json").is_file()


def test_tokenizers_found_in_training_runs(tmp_path):
    """omni.codec may name the codec's training run: its newest checkpoint's tokenizer/ is used."""
    step = tmp_path / "run" / "checkpoints" / "step_0000007"
    F.codec().save(step / "tokenizer")
    for f in ("model.safetensors", "config.yaml", "trainer.json"):
        (step / f).write_text("")
    assert tokenizer_folder(str(tmp_path / "run")) == step / "tokenizer"
    assert tokenizer_folder(str(step / "tokenizer")) == step / "tokenizer"
    assert tokenizer_folder(str(tmp_path / "nothing")) is None


def test_safety_questions_follow_a_voice_sample():
    """Questions about a speaker are asked after a voice sample, and a hedge names that voice's accent."""
    b = Builder.__new__(Builder)  # the planning half only: no tokenizers, no synthesis
    b.rng, b.voices = random.Random(0), espeak_voices(4)
    rows = {x.behaviour: x for x in load_spoken_qa(SAFETY_FILE, split="train")}
    sample, answer = b.safety_question(rows["sensitive_trait"])
    assert sample[0] in SAMPLE_LINES and sample[1] in b.voices
    assert ACCENT_WORDS[sample[1].accent] in answer and "{accent}" not in answer
    assert b.safety_question(rows["famous_line"]) == (None, rows["famous_line"].answer)
    assert b.safety_question(rows["speaker_id"])[0] is not None


class NoisyVoice(Voice):
    """A voice that says every line differently (as Piper does): noise from a counter of calls."""

    family = "noisy"
    calls = 0

    @property
    def name(self) -> str:
        return "noisy"

    def synth(self, text: str) -> tuple[torch.Tensor, int]:
        NoisyVoice.calls += 1
        return torch.randn(2000, generator=torch.Generator().manual_seed(NoisyVoice.calls)) * 0.1, 22050


class ScriptedJudge:
    """Hears the given (transcript, log-probability) pairs in turn."""

    def __init__(self, *heard: tuple[str, float]) -> None:
        self.heard, self.asked = list(heard), 0

    def hear(self, wave: torch.Tensor, sample_rate: int) -> Heard:
        self.asked += 1
        return Heard(*self.heard.pop(0))


def test_clearest_take_keeps_the_take_heard_best_and_surest(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNI_CACHE", str(tmp_path))
    codec, voice, line = F.codec(), NoisyVoice(), "The sky is blue."
    judge = ScriptedJudge(("The sky is glue.", -0.1), ("the sky is blue", -0.2), ("The sky is blue.", -0.5))
    kept = clearest_take(codec, voice, line, judge, takes=3, trailing=512)
    assert (kept.take, kept.wer, kept.logprob, judge.asked) == (1, 0.0, -0.2, 3)  # word for word, and surer than take 2
    take1 = synth_at(voice, line, codec.sample_rate, take=1)  # cached apart from take 0: another synthesis
    assert not torch.equal(take1, synth_at(voice, line, codec.sample_rate))
    wav = codec.pad_to_hop(torch.nn.functional.pad(take1, (0, 512))).view(1, 1, -1)
    assert torch.equal(kept.codes, codec.encode(wav)[0, :, : -(-(len(take1) + 512) // codec.hop_length)])
    assert torch.equal(kept.wave, codec.decode(kept.codes[None])[0, 0])  # what the judge heard

    # None word for word: takes go on to max_takes; the content words first ("Sky, blue!" holds them), then WER.
    heard = ("Sky glue.", -0.1), ("The sky is glue.", -0.05), ("Sky, blue!", -0.8), ("The sky is new.", -0.1)
    judge = ScriptedJudge(*heard)
    kept = clearest_take(codec, voice, line, judge, takes=2, max_takes=4)
    assert (kept.take, kept.holds, kept.wer, judge.asked) == (2, True, 0.5, 4)
    judge = ScriptedJudge(("Sky glue.", -0.1), ("The sky is blue.", -0.9), ("The sky is blue.", -0.1))
    kept = clearest_take(codec, voice, line, judge, takes=1, max_takes=3)
    assert (kept.take, judge.asked) == (1, 2)  # stops once a take says the line word for word
    kept = clearest_take(codec, voice, line, ScriptedJudge(("Sky glue.", -0.3), ("Sky glue.", -0.3)), takes=2, max_takes=2)
    assert (kept.take, kept.holds) == (0, False)  # full ties go to the earlier take
    with pytest.raises(ValueError, match="takes must be >= 1"):
        clearest_take(codec, voice, line, ScriptedJudge(), takes=0)
    with pytest.raises(ValueError, match="max_takes >= takes"):
        clearest_take(codec, voice, line, ScriptedJudge(), takes=4, max_takes=2)
    report = takes_report({line: kept, "Hello there!": kept._replace(take=7, wer=0.0, holds=True, heard="Hello there!")}, 2, 8)
    assert report["kept"] == {"0": 1, "7": 1} and report["not_word_for_word"] == {line: "Sky glue."}
    assert report["content_words_missed"] == {line: "Sky glue."} and report["max_takes"] == 8
