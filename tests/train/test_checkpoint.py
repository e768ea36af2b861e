"""Checkpoints: pickle-free state, atomic saves that survive a kill, clear errors for bad inputs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.train.test_trainer import ROOT, corpus, fit, micro_cfg, micro_overrides  # noqa: F401 (corpus: a fixture)

from omni.train.checkpoint import (CheckpointError, flatten_state, load_model_state, load_state, resolve_checkpoint,
                                   save_state, unflatten_state)

from omni import load_model
from omni.config import load_config
from omni.io.tensors import NonFiniteWeights, load_tensors, save_tensors
from omni.model.build import build_model
from omni.tokenizers.base import load_tokenizer
from omni.tokenizers.image import ImageTokConfig, ImageTokenizer
from omni.train.checkpoint import save_tensors as save_checkpoint_tensors


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory) -> Path:
    """A 6-step run with checkpoints at steps 3 and 6."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    fit(micro_cfg(corpus, out))
    return out


def test_state_roundtrip_without_pickle(tmp_path):
    state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)}},
             "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.95), "params": [0], "foreach": None, "name": "x"}],
             "numpy": [np.arange(4, dtype=np.uint32), 7, 2.5], "flag": True}
    save_state(tmp_path, "opt", state)
    back = load_state(tmp_path, "opt")
    assert back["param_groups"] == state["param_groups"]  # tuples and int keys survive
    assert torch.equal(back["state"][0]["exp_avg"], state["state"][0]["exp_avg"])
    assert np.array_equal(back["numpy"][0], state["numpy"][0]) and back["numpy"][1:] == [7, 2.5]
    with pytest.raises(TypeError, match="cannot store object at .bad"):
        flatten_state({"bad": object()}, {})
    assert unflatten_state(flatten_state([1, "a", None], {}), {}) == [1, "a", None]


def test_layout_and_model_state(run):
    step = resolve_checkpoint(run)
    assert step == (run / "checkpoints" / "step_0000006").resolve()
    assert (run / "latest").read_text().strip() == "checkpoints/step_0000006"
    files = {p.name for p in step.iterdir()}
    assert {"model.safetensors", "optimizer.safetensors", "optimizer.json", "trainer.json", "config.yaml",
            "rng_rank00000.safetensors", "tokenizer"} <= files
    assert not [p for p in step.rglob("*") if p.suffix in (".pt", ".pth", ".bin", ".pkl")]
    cfg, state = load_model_state(run)
    build_model(cfg).load_state_dict(state)  # strict: every key present, shapes right
    assert resolve_checkpoint(run / "checkpoints") == step
    assert resolve_checkpoint(run / "checkpoints" / "step_0000003").name == "step_0000003"


def test_missing_and_corrupt_checkpoints(run, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a complete checkpoint.*model.safetensors"):
        resolve_checkpoint(tmp_path / "empty")
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(run / "checkpoints" / "step_0000006", bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated, as by a full disk
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model_state(bad)
    (bad / "optimizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="optimizer state"):
        load_state(bad, "optimizer")
    dangling = tmp_path / "dangling"
    dangling.mkdir()
    (dangling / "latest").write_text("checkpoints/step_0000009\n")
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(dangling)


def test_resume_refuses_a_different_model(run, corpus, tmp_path):
    with pytest.raises(CheckpointError, match=r"model\.n_layers: checkpoint 2 vs now 3"):
        fit(micro_cfg(corpus, tmp_path / "other", "model.n_layers=3"), resume=str(run))


def test_resume_without_checkpoint_is_an_error(corpus, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        fit(micro_cfg(corpus, tmp_path / "fresh"), resume="")


def test_keep_checkpoints_prunes(corpus, tmp_path):
    fit(micro_cfg(corpus, tmp_path / "run", "train.ckpt_every=1", "train.keep_checkpoints=2", "train.steps=4"))
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_0000003", "step_0000004"]


# A training process whose 2nd checkpoint hangs in the fsync that precedes the rename.
_HANGING_SAVE = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
import omni.train.checkpoint as ck
from omni.config import load_config
from tests.train.test_trainer import fit
real = ck._fsync_tree
def slow(folder):
    if "step_0000002" in str(folder):
        Path({marker!r}).write_text("saving")
        time.sleep(600)
    real(folder)
ck._fsync_tree = slow
fit(load_config("tiny", {overrides!r}))
"""


def test_atomic_save_survives_kill(corpus, tmp_path):
    run, marker = tmp_path / "run", tmp_path / "marker"
    overrides = micro_overrides(corpus, run, "train.ckpt_every=1", "train.steps=3")
    code = _HANGING_SAVE.format(root=str(ROOT), marker=str(marker), overrides=overrides)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "the training subprocess never reached its second save"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)  # mid-save: the step-2 folder is written but not in place
    finally:
        proc.kill()
        proc.wait()
    assert (run / "checkpoints" / ".tmp_step_0000002").is_dir()
    assert resolve_checkpoint(run).name == "step_0000001"
    load_model_state(run)  # the last good checkpoint is intact
    # Resuming picks up from step 1, cleans the debris and finishes the run.
    fit(micro_cfg(corpus, run, "train.ckpt_every=1", "train.steps=3"), resume="")
    assert resolve_checkpoint(run).name == "step_0000003"
    assert not list((run / "checkpoints").glob(".tmp_*"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 2, 3]  # step 2 ran before the kill and again after resuming
    assert records[1]["loss"] == records[2]["loss"]


def _header(raw: bytes) -> tuple[int, dict]:
    n = int.from_bytes(raw[:8], "little")
    return n, json.loads(raw[8: 8 + n])


def _poison(path: Path, name: str) -> None:
    """Overwrite the bytes of tensor ``name`` of a safetensors file with 0xFF (NaN), same file size."""
    raw = bytearray(path.read_bytes())
    n, header = _header(raw)
    start, end = header[name]["data_offsets"]
    raw[8 + n + start: 8 + n + end] = b"\xff" * (end - start)
    path.write_bytes(raw)


def test_non_finite_weights_are_refused_by_every_loader(run, tmp_path):
    """Issue 19, case 7: a checkpoint with one tensor's bytes set to 0xFF loaded silently."""
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    step = resolve_checkpoint(bad)
    _poison(step / "model.safetensors", "layers.1.attention.wq.weight")
    with pytest.raises(CheckpointError, match=r"layers\.1\.attention\.wq\.weight .*NaN or infinite"):
        load_model_state(bad)
    with pytest.raises(CheckpointError, match=r"layers\.1\.attention\.wq\.weight"):
        load_model(bad)
    cfg = load_config(str(run / "config.yaml"))
    cfg.train.out_dir = str(tmp_path / "resumed")
    with pytest.raises(CheckpointError, match=r"layers\.1\.attention\.wq\.weight"):  # resume reads the same file
        fit(cfg, resume=str(step))
    opt = sorted(set(_header((step / "optimizer.safetensors").read_bytes())[1]) - {"__metadata__"})[0]
    _poison(step / "optimizer.safetensors", opt)
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_state(step, "optimizer")


def test_non_finite_weights_are_never_written(tmp_path):
    good = {"a": torch.ones(3), "ids": torch.arange(3)}
    save_tensors(good, tmp_path / "ok.safetensors")
    assert torch.equal(load_tensors(tmp_path / "ok.safetensors")["a"], good["a"])
    for value in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(NonFiniteWeights, match="tensor.s. b hold NaN or infinite"):
            save_tensors({**good, "b": torch.tensor([0.0, value])}, tmp_path / "x.safetensors")
        assert not (tmp_path / "x.safetensors").exists()
        with pytest.raises(CheckpointError, match="b hold"):
            save_checkpoint_tensors({"b": torch.tensor([value])}, tmp_path / "y.safetensors")
        with pytest.raises(CheckpointError, match="NaN or infinite"):
            save_state(tmp_path, "opt", {"exp_avg": torch.tensor([value])})


def test_tokenizer_weights_with_nan_are_refused(tmp_path):
    tok = ImageTokenizer(ImageTokConfig(image_size=16, channels=8, channel_mult=[1, 2], blocks=1, levels=[4, 4]))
    tok.save(tmp_path / "tok")
    name = next(k for k, v in tok.state_dict().items() if v.is_floating_point())
    _poison(tmp_path / "tok" / "model.safetensors", name)
    with pytest.raises(NonFiniteWeights, match=name.replace(".", r"\.")):
        load_tokenizer(tmp_path / "tok")
