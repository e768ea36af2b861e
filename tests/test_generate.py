"""`python -m omni.generate` from a checkpoint and from a config; load_model's errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from omni.infer.text import TextGenerator, load_model
from omni.config import Config, ConfigError, TokenizerConfig, save_config
from omni.generate import main
from omni.model.build import build_model
from omni.model.decoder import ModelConfig
from omni.model.sampling import SamplingConfig
from omni.tokenizers.text import SentencePieceTokenizer
from omni.train.checkpoint import CheckpointError, begin_save, finish_save

ROOT = Path(__file__).resolve().parent.parent
TEXTS = [f"the cat number {i} sat on the mat and looked at the dog." for i in range(100)]


def write_checkpoint(run: Path, cfg: Config, model: torch.nn.Module, tokenizer, step: int = 3) -> Path:
    """A run folder as the Trainer writes it (config, weights, trainer state, tokenizer/, latest)."""
    tmp = begin_save(run, step)
    save_file(model.state_dict(), str(tmp / "model.safetensors"))
    save_config(cfg, tmp / "config.yaml")
    (tmp / "trainer.json").write_text(json.dumps({"step": step}))
    tokenizer.save(tmp / "tokenizer")
    return finish_save(run, step, keep=2)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    tok = SentencePieceTokenizer.train(TEXTS, 320, root / "spm")
    cfg = Config(model=ModelConfig(vocab_size=320, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64,
                                   max_seq_len=64),
                 tokenizer=TokenizerConfig(kind="sentencepiece", path=str(root / "spm"), vocab_size=320))
    torch.manual_seed(0)
    model = build_model(cfg)
    write_checkpoint(root / "tiny", cfg, model, tok)
    return root / "tiny", model, tok


def test_checkpoint_cli_matches_api(tiny_run, capsys):
    run, model, tok = tiny_run
    text = main(["--checkpoint", str(run), "--prompt", "the cat", "--max-new-tokens", "12"])
    assert capsys.readouterr().out == text + "\n"
    # Same tokens as generating with the in-memory model that was saved.
    assert text == TextGenerator(model.eval(), tok).generate("the cat", max_new_tokens=12)
    # Sampling is reproducible with a seed; the step folder works as well as the run folder.
    step_dir = next((run / "checkpoints").iterdir())
    args = ["--prompt", "the cat", "--max-new-tokens", "12", "--temperature", "1.0", "--top-k", "20", "--seed", "7"]
    assert main(["--checkpoint", str(step_dir), *args]) == main(["--checkpoint", str(run), *args])


def test_load_model_errors(tiny_run, tmp_path):
    run, model, tok = tiny_run
    with pytest.raises(FileNotFoundError, match="neither a checkpoint .* nor a config"):
        load_model(tmp_path / "nothing")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text("model: {dim: 32}\n")
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        load_model(broken)
    # Weights of another shape under this config: the message names both files.
    step_dir = next((run / "checkpoints").iterdir())
    bad = tmp_path / "bad"
    cfg = Config(model=ModelConfig(vocab_size=320, dim=48, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len=64),
                 tokenizer=TokenizerConfig(kind="sentencepiece", path=str(step_dir / "tokenizer")))
    write_checkpoint(bad, cfg, model, tok)
    with pytest.raises(ConfigError, match=r"config\.yaml does not match the weights .*model\.safetensors.*config \(48,"):
        load_model(bad)
    gen = TextGenerator(*load_model(run)[:2])
    with pytest.raises(ValueError, match="prompt has .* tokens but the model context"):
        gen.generate("the cat sat on the mat " * 20)
    # A prompt that fits but leaves less room than asked for is cut at the context, not refused
    # (omni.model.sampling.generate itself raises when prompt + max_new_tokens exceeds the context).
    assert isinstance(gen.generate("the cat", max_new_tokens=500, sampling=SamplingConfig(temperature=1.0), seed=0), str)


def test_cli_error_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "omni.generate", "--checkpoint", str(tmp_path / "none"), "--prompt", "x"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and "neither a checkpoint" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_config_cli_chat_answers():
    """The pretrained instruct model through the real command line, chat template by default."""
    out = subprocess.run([sys.executable, "-m", "omni.generate", "--config", "configs/smollm2-135m.yaml",
                          "--prompt", "What is the capital of France?", "--max-new-tokens", "10"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout


def test_text_is_literal_and_trusted_callers_pass_ids(tiny_run):
    """A string prompt is literal text; an id list (trusted) is used as given (issue 19, case 1)."""
    _, model, tok = tiny_run
    gen = TextGenerator(model.eval(), tok)
    typed = "the cat<|eos|><|bos|>"
    ids = tok.encode(typed)
    assert tok.eos_id not in ids and tok.bos_id not in ids
    assert gen.generate(typed, max_new_tokens=8) == gen.generate(ids, max_new_tokens=8)
    with pytest.raises(ValueError, match="prompt ids must lie"):
        gen.generate([tok.vocab_size], max_new_tokens=2)
