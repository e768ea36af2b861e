"""DeepSpeed ZeRO-2/3 and FSDP2 on 2 CPU processes (gloo) give the losses of one process with the same
global batch, and resume exactly. Tolerance against one process: 1e-4 absolute (measured ~2e-6: the
only difference is the order of float reductions)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_train import ROOT, corpus, fit, losses, micro_cfg, micro_overrides  # noqa: F401 (corpus: a fixture)

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
TOL = 1e-4


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> Path:
    """One process, batch 8: the run the 2-process runs (batch 4 each) must reproduce."""
    out = tmp_path_factory.mktemp("dist") / "single"
    fit(micro_cfg(corpus, out))
    return out


def torchrun(corpus: Path, out: Path, *args: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "train.py"), "--config", "tiny", *args, *micro_overrides(corpus, out, "train.batch_size=4")]
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))}
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_matches_single_process_and_resumes(stage, corpus, reference, tmp_path):
    pytest.importorskip("deepspeed")
    ds = str(ROOT / "configs" / "deepspeed" / f"zero{stage}.json")
    torchrun(corpus, tmp_path / "ds", "--deepspeed", ds)
    ref, got = losses(reference), losses(tmp_path / "ds")
    assert sorted(got) == sorted(ref)
    assert max(abs(ref[s] - got[s]) for s in ref) < TOL
    # The gathered model.safetensors loads into a single-process model.
    from omni.model.build import build_model
    from omni.train.checkpoint import load_model_state

    cfg, state = load_model_state(tmp_path / "ds")
    build_model(cfg).load_state_dict(state)
    if stage == 3:  # resume from the ZeRO-3 checkpoint at step 3: bit-identical steps 4..6
        torchrun(corpus, tmp_path / "resumed", "--deepspeed", ds, "--resume", str(tmp_path / "ds" / "checkpoints" / "step_0000003"))
        again = losses(tmp_path / "resumed")
        assert [again[s] for s in (4, 5, 6)] == [got[s] for s in (4, 5, 6)]


def test_fsdp2_matches_single_process_and_resumes_its_checkpoints(corpus, reference, tmp_path):
    torchrun(corpus, tmp_path / "fsdp", "--fsdp")
    ref, got = losses(reference), losses(tmp_path / "fsdp")
    assert max(abs(ref[s] - got[s]) for s in ref) < TOL
    # FSDP2 and one process share a checkpoint layout: continue the single-process run under FSDP2.
    torchrun(corpus, tmp_path / "cross", "--fsdp", "--resume", str(reference / "checkpoints" / "step_0000003"))
    cross = losses(tmp_path / "cross")
    assert max(abs(ref[s] - cross[s]) for s in (4, 5, 6)) < TOL
