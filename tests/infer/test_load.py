"""The one checkpoint loader (omni/infer/load.py): weights round-trip, the task check, the shape check."""
import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from omni.config import Config, ConfigError, save_config
from omni.infer import load as load_module
from omni.infer.load import decoder_shape, load_checkpoint, shipped_omni
from omni.model.decoder import Decoder, ModelConfig
from omni.tokenizers.codec import SHIPPED_CODEC_SHA256
from tests import omni_fixtures as F

TINY = ModelConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len=16)


def write_step(folder, cfg: Config, model: torch.nn.Module) -> None:
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    save_config(cfg, folder / "config.yaml")
    (folder / "trainer.json").write_text(json.dumps({"step": 1}))


def test_round_trip_and_checks(tmp_path):
    torch.manual_seed(0)
    saved = Decoder(TINY)
    write_step(tmp_path / "lm", Config(model=TINY, task="lm"), saved)
    model, cfg, step = load_checkpoint(tmp_path / "lm", decoder_shape)
    assert step == tmp_path / "lm" and cfg.task == "lm" and not model.training
    for k, v in saved.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    with pytest.raises(ValueError, match="is a 'lm' checkpoint, not an omni one"):
        load_checkpoint(tmp_path / "lm", decoder_shape, task="omni")
    # Weights of another width than the saved config says: refused before loading, every file named.
    write_step(tmp_path / "bad", Config(model=dataclasses.replace(TINY, dim=48), task="lm"), saved)
    with pytest.raises(ConfigError, match=r"config\.yaml does not match the weights .*model\.safetensors.*config \(64, 48\) vs file \(64, 32\)"):
        load_checkpoint(tmp_path / "bad", decoder_shape)


def test_shipped_omni_checks_every_weight_file(tmp_path, monkeypatch):
    """omni/assets/omni-tiny is a complete step folder whose weight files match their recorded sha256
    (its codec is the shipped codec-tiny); a damaged or missing file is refused by name."""
    step = shipped_omni()
    assert step == load_module.SHIPPED_OMNI and (step / "vocab.json").is_file()
    assert load_module.SHIPPED_OMNI_SHA256["tokenizers/codec/model.safetensors"] == SHIPPED_CODEC_SHA256
    damaged = F.damaged_copy(load_module.SHIPPED_OMNI, tmp_path / "omni-tiny", "tokenizers/image/model.safetensors")
    monkeypatch.setattr(load_module, "SHIPPED_OMNI", damaged)
    weights = damaged / "tokenizers" / "image" / "model.safetensors"
    with pytest.raises(ValueError, match=r"image/model\.safetensors has sha256 .*Reinstall omni"):
        shipped_omni()
    weights.unlink()
    with pytest.raises(ValueError, match=r"image/model\.safetensors is missing"):
        shipped_omni()
