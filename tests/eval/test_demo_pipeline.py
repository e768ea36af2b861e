"""make demo's pipeline (eval/demo_pipeline.py): step budgets and reuse of finished tokenizer runs, on a
2-step image tokenizer trained by the one Trainer; the shipped codec and the shipped omni-tiny."""
import argparse
import json

import pytest

from omni.config import load_config
from omni.conversation import Audio
from omni.data.build_images import build_image_corpus
from omni.data.spoken_qa import load_spoken_qa
from omni.data.voices import synth_at, unseen_voices
from omni.eval import demo_pipeline
from omni.eval.demo_answers import caption_unseen_crops
from omni.eval.demo_pipeline import budget_steps, trained_tokenizer_run
from omni.infer.chat import OmniChat
from omni.infer.guardrail import load_reference
from omni.tokenizers import load_tokenizer
from omni.tokenizers.codec import SHIPPED_CODEC
from omni.train.checkpoint import resolve_checkpoint
from omni.train.task import get_task
from omni.train.trainer import Trainer


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A finished 2-step image-tiny run (tiny corpus of the bundled pictures) and its config."""
    tmp = tmp_path_factory.mktemp("demo")
    build_image_corpus(tmp / "images")
    cfg = load_config("configs/image-tiny.yaml", [
        f"image_tok.data_path={tmp / 'images'}", "image_tok.crops_per_epoch=16", "image_tok.channels=8",
        f"train.out_dir={tmp / 'run'}", "train.steps=2", "train.batch_size=2", "train.warmup_steps=1",
        "train.log_every=1", "train.ckpt_every=1", "train.tensorboard=false",
    ])
    Trainer(cfg, get_task("image"), argparse.Namespace(deepspeed=None, fsdp=False, resume=None, overwrite=False)).fit()
    return tmp / "run", cfg


def test_budget_steps_clamped(image_run):
    _, cfg = image_run
    assert budget_steps(cfg, budget_s=0.0, max_steps=50, min_steps=3) == 3
    assert budget_steps(cfg, budget_s=1e6, max_steps=50) == 50


def test_finished_tokenizer_run_reused_else_retrained(image_run, tmp_path):
    import shutil

    run, cfg = image_run
    folder = trained_tokenizer_run(run, cfg, "image_tok")
    assert folder is not None and folder.parent.name == "step_0000002"
    assert load_tokenizer(folder).metadata["image_size"] == cfg.section("image_tok").image_size
    # An edited tokenizer config means a retrain.
    edited = load_config("configs/image-tiny.yaml", [f"image_tok.data_path={cfg.section('image_tok').data_path}"])
    assert trained_tokenizer_run(run, edited, "image_tok") is None
    # A run stopped before its own train.steps (here: latest points at step 1 of 2) is not finished.
    partial = tmp_path / "partial"
    shutil.copytree(run, partial)
    (partial / "latest").write_text("checkpoints/step_0000001\n")
    assert json.loads((partial / "checkpoints" / "step_0000001" / "trainer.json").read_text())["step"] == 1
    assert trained_tokenizer_run(partial, cfg, "image_tok") is None
    assert trained_tokenizer_run(tmp_path / "missing", cfg, "image_tok") is None


def test_the_demo_talks_with_the_shipped_codec_unless_from_scratch(monkeypatch):
    """The codec stage takes the shipped, sha256-checked codec-tiny and trains nothing; --from-scratch
    goes to the Trainer instead (stopped here at the corpus build)."""
    monkeypatch.setattr(demo_pipeline, "TOKENIZERS", {"codec": demo_pipeline.TOKENIZERS["codec"]})
    timings: dict[str, float] = {}
    runs = demo_pipeline.train_tokenizers(timings, from_scratch=False)
    assert runs == {"codec": SHIPPED_CODEC} and "codec tokenizer" in timings

    def stop(name, cfg):
        raise RuntimeError(f"training {name}")

    monkeypatch.setattr(demo_pipeline, "trained_tokenizer_run", lambda *a: None)
    monkeypatch.setattr(demo_pipeline, "build_tokenizer_corpus", stop)
    with pytest.raises(RuntimeError, match="training codec"):
        demo_pipeline.train_tokenizers({}, from_scratch=True)


def test_the_demo_talks_with_the_shipped_omni(tmp_path):
    """By default the omni stage copies the shipped, sha256-checked omni-tiny into the run folder (a run
    folder like a trained one: OmniChat loads it), and that model captions unseen crops of the demo's
    pictures (measured 14 / 14, docs/benchmarks.md) and speaks: a spoken question in an unseen voice
    gets a reply of audio frames, spoken from a text monologue."""
    step = demo_pipeline.install_shipped_omni(str(tmp_path / "demo-omni"))
    assert resolve_checkpoint(tmp_path / "demo-omni") == step and not (step / "MODEL_CARD.md").exists()
    bot = OmniChat.load(tmp_path / "demo-omni")
    # its codec is the shipped codec-tiny: the guardrail hears the preset voice through it
    assert bot.voice_reference.equal(load_reference(SHIPPED_CODEC)) and not bot.voice_reference.equal(load_reference())
    assert caption_unseen_crops(bot)["summary"]["accuracy"] >= 12 / 14
    question = synth_at(unseen_voices(1)[0], load_spoken_qa()[0].question, bot.sample_rate)
    reply = bot.chat([{"role": "user", "content": [{"type": "audio", "wav": question}]}], max_new_tokens=60)
    frames = sum(p.codes.shape[1] for p in reply.reply.parts if isinstance(p, Audio))
    assert reply.audio is not None and frames >= 10 and reply.text.strip(), (frames, reply.text)
