"""Training configs: the shipped YAMLs load, overrides are typed, mistakes are named; DeepSpeed JSONs."""
from __future__ import annotations

import json

import pytest

from omni.config import Config, ConfigError, SECTIONS, config_from_dict, load_config, save_config, section_class
from omni.train.distributed import deepspeed_config
from tests.train.test_trainer import ROOT
from omni.train.checkpoint import load_config_file


@pytest.mark.parametrize("name", ["tiny", "1b", "7b"])
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert cfg.name == name and cfg.task == "lm"
    assert cfg.model.vocab_size == cfg.tokenizer.vocab_size
    assert cfg.data.seq_len <= cfg.model.max_seq_len


def test_overrides_are_parsed_as_typed_yaml():
    cfg = load_config("tiny", ["train.lr=1e-4", "model.qk_norm=true", "train.betas=[0.8, 0.9]", "train.steps=7",
                               "train.out_dir=/tmp/x", "name=exp1"])
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)
    assert cfg.model.qk_norm is True and cfg.train.betas == (0.8, 0.9) and cfg.train.steps == 7
    assert cfg.train.out_dir == "/tmp/x" and cfg.name == "exp1"
    assert load_config("tiny").train.lr == 3e-3  # the file itself is untouched


@pytest.mark.parametrize("override, message", [
    ("model.bogus=1", "unknown config key 'model.bogus'"),
    ("trian.steps=1", "unknown config key 'trian'"),
    ("train.steps=abc", "train.steps: expected an integer"),
    ("train.steps=2.5", "train.steps: expected an integer"),
    ("model.qk_norm=3", "model.qk_norm: expected true/false"),
    ("train.betas=[0.9]", "train.betas: expected 2 values"),
    ("train.lr=fast", "train.lr: expected a number"),
    ("model.n_heads=5", "model.dim=192 must be divisible by model.n_heads=5"),
    ("train.dtype=fp8", "train.dtype must be auto, fp32 or bf16"),
    ("train.steps=0", "train.steps must be positive"),
    ("train.steps", "must look like section.key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config("tiny", [override])


def test_unknown_key_in_a_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  dim: 64\n  layers: 2\n")
    with pytest.raises(ConfigError, match="unknown config key 'model.layers'"):
        load_config(path)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_deepspeed_json_auto_fill(stage):
    path = ROOT / "configs" / "deepspeed" / f"zero{stage}.json"
    cfg = load_config("tiny", ["train.batch_size=3", "train.grad_accum=5", "train.grad_clip=0.5"])
    cpu = deepspeed_config(str(path), cfg, cuda=False)
    assert cpu["zero_optimization"]["stage"] == stage
    assert (cpu["train_micro_batch_size_per_gpu"], cpu["gradient_accumulation_steps"], cpu["gradient_clipping"]) == (3, 5, 0.5)
    assert "optimizer" not in cpu and cpu["bf16"]["enabled"] is False  # torch AdamW, fp32 on CPU
    gpu = deepspeed_config(str(path), cfg, cuda=True)
    assert gpu["bf16"]["enabled"] is True
    assert gpu["optimizer"]["params"]["lr"] == cfg.train.lr and gpu["optimizer"]["params"]["betas"] == [0.9, 0.95]


def test_deepspeed_json_conflicts_are_named(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 2}}))
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu=4 disagrees with the config"):
        deepspeed_config(str(path), load_config("tiny"), cuda=False)
    path.write_text("{oops")
    with pytest.raises(ValueError, match="cannot read the DeepSpeed JSON"):
        deepspeed_config(str(path), load_config("tiny"), cuda=False)


def test_every_shipped_config_loads_in_a_fresh_process():
    """Sections (omni, codec, rbr, ...) are found from the YAML alone, before their modules are imported."""
    import subprocess
    import sys

    code = (
        "import glob; from omni.config import load_config\n"
        "for f in sorted(glob.glob('configs/*.yaml')): load_config(f)\n"
        "print('ok')"
    )
    root = __import__("pathlib").Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_serving_section_is_read_at_serving_time_not_saved(tmp_path):
    cfg = load_config("omni-tiny", ["serving.vad_threshold=0.7"])
    assert cfg.serving.vad_threshold == 0.7 and cfg.serving.max_reply_frames == 100
    save_config(cfg, tmp_path / "config.yaml")
    saved = (tmp_path / "config.yaml").read_text()
    assert "serving" not in saved and "vad_threshold" not in saved
    with pytest.raises(ConfigError, match=r"serving.vad_threshold must be in \[0, 1\]"):
        config_from_dict({"serving": {"vad_threshold": 1.5}})


@pytest.mark.parametrize("key, message", [
    ("omni.vad_threshold=0.6", "'omni.vad_threshold' moved to 'serving.vad_threshold'"),
    ("omni.max_reply_frames=9", "'omni.max_reply_frames' moved to 'serving.max_reply_frames'"),
    ("omni.audio_loss_weight=2", "'omni.audio_loss_weight' moved to 'omni_train.audio_loss_weight'"),
    ("omni.text_pad_weight=0.3", "'omni.text_pad_weight' moved to 'omni_train.text_pad_weight'"),
    ("omni.audio_codebooks=8", "'omni.audio_codebooks' is gone: the value comes from the corpus's vocabulary"),
    ("codec.vocoder_context=13", "'codec.vocoder_context' is gone: the value comes from the streaming vocoder's"),
])
def test_moved_keys_name_their_new_home(key, message):
    with pytest.raises(ConfigError, match=message):
        load_config("omni-tiny", [key])


def test_old_checkpoint_config_still_loads(tmp_path):
    # A checkpoint written before the serving split carries serving knobs, codebook counts and loss
    # weights under omni.
    path = tmp_path / "config.yaml"
    path.write_text("task: omni\nomni:\n  depth_dim: 64\n  audio_codebooks: 8\n  audio_codebook_size: 1024\n"
                    "  vad_threshold: 0.9\n  end_of_turn_ms: 480\n  barge_in_ms: 160\n  max_reply_frames: 100\n"
                    "  audio_loss_weight: 2.0\n  text_pad_weight: 0.3\n"
                    "codec:\n  vocoder_context: 13\n  vocoder_lookahead: 12\n")  # before the cached vocoder
    cfg = load_config_file(path)
    assert cfg.section("omni").depth_dim == 64 and cfg.serving.vad_threshold == 0.5  # serving is not identity
    assert "omni_train" not in cfg.to_dict()  # loss weights are the run's: the current config gives them


def test_one_section_registry():
    cfg = Config()
    for name in SECTIONS:
        assert type(cfg.section(name)) is section_class(name)
    with pytest.raises(ConfigError, match="unknown config section 'bogus'"):
        cfg.section("bogus")
