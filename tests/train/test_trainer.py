"""The training loop on one CPU process: loss falls, exact resume, accumulation, NaN stop, run folders,
packing and the resumable sampler. Other test files import ``small_corpus`` and ``micro_cfg``."""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from omni.config import Config, load_config
from omni.train.task import Task, get_task
from omni.data.build_text import build_text_corpus
from omni.io.tensors import load_tensors, save_tensors
from omni.train.checkpoint import CheckpointError, load_model_state, resolve_checkpoint
from omni.train.distributed import DistInfo, build_engine
from omni.train.packing import PackedDataset, ShardWriter, pack_row
from omni.train.sampler import ResumableSampler
from omni.train.trainer import RunExistsError, Trainer, TrainingDiverged, lr_at

ROOT = Path(__file__).resolve().parents[2]


def small_corpus() -> Path:
    """A ~150k-character demo corpus with a 512-piece tokenizer, built once into the cache (under a
    lock: test files of parallel pytest-xdist workers ask for it at the same time)."""
    folder = Path(os.environ.get("OMNI_CACHE", ROOT / ".cache")).resolve() / "test" / "text_small"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / "text_small.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (folder / "index.json").is_file():
            cfg = load_config("tiny", [f"tokenizer.path={folder / 'tokenizer'}", "tokenizer.vocab_size=512"])
            build_text_corpus(cfg, folder, max_chars=150_000, num_instructions=500)
    return folder


def micro_overrides(corpus: Path, out_dir: Path, *extra: str) -> list[str]:
    """A 2-layer, 64-wide decoder on 32-token rows: a training step takes a few ms."""
    return [
        "model.vocab_size=512", "model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2",
        "model.ffn_dim=172", "model.max_seq_len=64", f"data.path={corpus}", "data.seq_len=32",
        f"tokenizer.path={corpus / 'tokenizer'}", "tokenizer.vocab_size=512", f"train.out_dir={out_dir}",
        "train.steps=6", "train.batch_size=8", "train.warmup_steps=2", "train.log_every=1", "train.ckpt_every=3",
        "train.keep_checkpoints=0", "train.tensorboard=false", *extra,
    ]


def micro_cfg(corpus: Path, out_dir: Path, *extra: str) -> Config:
    return load_config("tiny", micro_overrides(corpus, out_dir, *extra))


def fit(cfg: Config, **args) -> Path:
    ns = argparse.Namespace(deepspeed=None, fsdp=False, resume=None, overwrite=False)
    for k, v in args.items():
        setattr(ns, k, v)
    return Trainer(cfg, get_task(cfg.task), ns).fit()


def losses(run_dir: Path) -> dict[int, float]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


@pytest.fixture(scope="module")
def corpus() -> Path:
    return small_corpus()


def test_loss_falls(corpus, tmp_path):
    cfg = micro_cfg(corpus, tmp_path / "run", "train.steps=40", "train.lr=1e-2", "train.ckpt_every=40")
    fit(cfg)
    run = losses(tmp_path / "run")
    start, end = run[1], np.mean([run[s] for s in range(36, 41)])
    assert start > 6.0  # ~ln(512) at random init
    assert end < start - 1.0, (start, end)


def test_resume_is_exact(corpus, tmp_path):
    # 6 steps straight vs 3 steps + resume + 3 steps, with accumulation: identical losses, bit for bit.
    cfg = micro_cfg(corpus, tmp_path / "straight", "train.batch_size=4", "train.grad_accum=2")
    fit(cfg)
    resumed = micro_cfg(corpus, tmp_path / "resumed", "train.batch_size=4", "train.grad_accum=2")
    fit(resumed, resume=str(tmp_path / "straight" / "checkpoints" / "step_0000003"))
    a, b = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert sorted(b) == [4, 5, 6]
    assert [a[s] for s in (4, 5, 6)] == [b[s] for s in (4, 5, 6)]
    # --resume with no path continues the run folder itself, to a later step.
    fit(micro_cfg(corpus, tmp_path / "resumed", "train.batch_size=4", "train.grad_accum=2", "train.steps=7"), resume="")
    assert sorted(losses(tmp_path / "resumed")) == [4, 5, 6, 7]


def test_resume_ignores_serving_knobs(corpus, tmp_path):
    # Serving knobs are not model identity: a changed VAD threshold resumes; a changed shape does not.
    fit(micro_cfg(corpus, tmp_path / "run", "train.steps=3"))
    fit(micro_cfg(corpus, tmp_path / "run", "train.steps=4", "serving.vad_threshold=0.9"), resume="")
    assert sorted(losses(tmp_path / "run")) == [1, 2, 3, 4]
    with pytest.raises(CheckpointError, match="different config.*model.ffn_dim"):
        fit(micro_cfg(corpus, tmp_path / "run", "train.steps=5", "model.ffn_dim=256"), resume="")


def test_finetune_from_starts_from_the_weights_with_a_fresh_optimiser(corpus, tmp_path):
    fit(micro_cfg(corpus, tmp_path / "base", "train.steps=3"))
    step = tmp_path / "base" / "checkpoints" / "step_0000003"
    shutil.copytree(step, tmp_path / "bf16")  # as omni/assets ships weights: bfloat16, cast back on load
    save_tensors({k: v.bfloat16() for k, v in load_tensors(step / "model.safetensors").items()},
                 tmp_path / "bf16" / "model.safetensors")
    (tmp_path / "weights").mkdir()  # weights alone, as a shipped tokenizer folder holds them
    shutil.copy(step / "model.safetensors", tmp_path / "weights")
    ns = argparse.Namespace(deepspeed=None, fsdp=False, resume=None, overwrite=False)
    for folder in (step, tmp_path / "bf16", tmp_path / "weights"):
        saved = load_tensors(folder / "model.safetensors")
        tuned = Trainer(micro_cfg(corpus, tmp_path / f"from_{folder.name}", f"train.finetune_from={folder}"), get_task("lm"), ns)
        assert tuned.step == 0
        state = tuned.module.state_dict()
        for name, value in saved.items():
            assert state[name].dtype == torch.float32 and torch.equal(state[name], value.float()), name
    fit(micro_cfg(corpus, tmp_path / "tuned", "train.steps=2", f"train.finetune_from={step}"))
    assert sorted(losses(tmp_path / "tuned")) == [1, 2]
    assert losses(tmp_path / "tuned")[1] < losses(tmp_path / "base")[1] - 0.1  # trained weights, not a fresh model
    with pytest.raises(CheckpointError, match="do not fit the model"):
        Trainer(micro_cfg(corpus, tmp_path / "wider", "model.ffn_dim=256", f"train.finetune_from={step}"), get_task("lm"), ns)


def test_grad_accum_matches_bigger_batch(corpus, tmp_path):
    fit(micro_cfg(corpus, tmp_path / "big", "train.steps=3"))
    fit(micro_cfg(corpus, tmp_path / "acc", "train.steps=3", "train.batch_size=2", "train.grad_accum=4"))
    a, b = losses(tmp_path / "big"), losses(tmp_path / "acc")
    assert max(abs(a[s] - b[s]) for s in a) < 1e-5


def test_activation_checkpointing_gives_the_same_losses(corpus, tmp_path):
    fit(micro_cfg(corpus, tmp_path / "plain", "train.steps=3"))
    fit(micro_cfg(corpus, tmp_path / "ckpt", "train.steps=3", "train.activation_checkpointing=true"))
    a, b = losses(tmp_path / "plain"), losses(tmp_path / "ckpt")
    assert max(abs(a[s] - b[s]) for s in a) < 1e-6


def test_nan_loss_stops_and_keeps_last_good_checkpoint(corpus, tmp_path):
    cfg = micro_cfg(corpus, tmp_path / "run", "train.lr=1e30", "train.warmup_steps=0", "train.ckpt_every=1",
                    "train.grad_clip=0")
    with pytest.raises(TrainingDiverged, match=r"(loss|gradient norm) became (nan|inf) at step 2.*last good checkpoint"):
        fit(cfg)
    last = resolve_checkpoint(tmp_path / "run")
    assert last.name == "step_0000001"  # nothing written after the divergence
    _, state = load_model_state(tmp_path / "run")
    assert all(torch.isfinite(t).all() for t in state.values())


def test_existing_out_dir_is_refused(corpus, tmp_path):
    fit(micro_cfg(corpus, tmp_path / "run", "train.steps=1"))
    with pytest.raises(RunExistsError, match="--resume.*--overwrite"):
        fit(micro_cfg(corpus, tmp_path / "run", "train.steps=1"))
    fit(micro_cfg(corpus, tmp_path / "run", "train.steps=2"), overwrite=True)
    assert sorted(losses(tmp_path / "run")) == [1, 2]  # started over, old metrics gone


def test_cli_reports_bad_override(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", "tiny", "train.bogus=1"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode != 0
    assert "unknown config key 'train.bogus'" in out.stderr


def test_cli_arguments_in_any_order():
    sys.path.insert(0, str(ROOT))
    from train import parse_args

    args = parse_args(["--config", "tiny", "a.b=1", "--resume", "train.steps=3", "--fsdp", "c.d=2"])
    assert args.resume == "" and args.fsdp and sorted(args.overrides) == ["a.b=1", "c.d=2", "train.steps=3"]
    assert parse_args(["--config", "tiny", "--resume", "runs/x", "e=3"]).resume == "runs/x"
    assert parse_args(["--config", "tiny"]).resume is None


def test_pack_row_restarts_positions_per_document():
    doc_starts = np.array([0, 5, 7, 12])
    tokens = np.arange(20, dtype=np.uint16)
    row = pack_row(tokens[3:10], doc_starts, 3)  # offsets 3..9: end of doc 0, doc 1, start of doc 2
    assert row["tokens"].tolist() == [3, 4, 5, 6, 7, 8, 9]
    assert row["document_ids"].tolist() == [0, 0, 1, 1, 2, 2, 2]
    assert row["positions"].tolist() == [0, 1, 0, 1, 0, 1, 2]


def test_packed_dataset_rows(tmp_path):
    w = ShardWriter(tmp_path, vocab_size=100)
    for n in (5, 9, 4, 7):
        w.add("train", range(1, n + 1))
    w.close()
    ds = PackedDataset(tmp_path, "train", seq_len=8)
    assert len(ds) == (25 - 1) // 8
    assert ds[1]["tokens"].tolist() == [4, 5, 6, 7, 8, 9, 1, 2, 3]
    assert ds[1]["document_ids"].tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1]
    assert ds[1]["positions"].tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2]
    with pytest.raises(ValueError, match="token ids must lie in"):
        w.add("train", [100])


def test_sampler_partitions_global_batches_and_resumes():
    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    one = ResumableSampler(50, batch_size=4, grad_accum=1, world_size=1, seed=3)
    ranks = [ResumableSampler(50, batch_size=2, grad_accum=1, rank=r, world_size=2, seed=3) for r in range(2)]
    for step, batch in enumerate(take(one, 20)):  # 12 steps per epoch: crosses into epoch 1
        shards = [take(r, step + 1)[step] for r in ranks]
        assert sorted(batch) == sorted(shards[0] + shards[1])
    # Resuming from a saved state continues exactly where the uninterrupted sampler is.
    a = ResumableSampler(50, batch_size=4, seed=3)
    a.advance(14)
    b = ResumableSampler(50, batch_size=4, seed=3)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == {"epoch": 1, "position": 8, "seed": 3, "num_rows": 50}
    assert take(b, 3) == take(one, 17)[14:]
    with pytest.raises(ValueError, match="same corpus"):
        ResumableSampler(51, batch_size=4, seed=3).load_state_dict(a.state_dict())


def test_lr_schedule():
    cfg = load_config("tiny", ["train.steps=100", "train.warmup_steps=10", "train.lr=1.0", "train.min_lr=0.1"])
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0) and lr_at(100, cfg) == pytest.approx(0.1)
    assert lr_at(55, cfg) == pytest.approx(0.55)


class _TwoPlayerTask(Task):
    """A toy GAN-shaped task for the multi-optimiser path: ``g`` fits the data, ``d`` tries to tell
    g's output from the data, and g's loss also reaches d's parameters (as a generator's does)."""

    name = "two-player"

    def build_model(self, cfg):
        torch.manual_seed(0)
        return torch.nn.ModuleDict({"g": torch.nn.Linear(4, 4), "d": torch.nn.Linear(4, 1)})

    def build_dataset(self, cfg, split="train"):
        return list(torch.randn(64, 4, generator=torch.Generator().manual_seed(1)))

    def collate(self, items):
        return torch.stack(items)

    def optimizers(self, model):
        return {"d": list(model["d"].parameters()), "g": list(model["g"].parameters())}

    def loss(self, model, batch, phase):
        fake = model["g"](batch)
        if phase == "d":
            loss = (model["d"](fake.detach()) - model["d"](batch)).mean()
        else:
            loss = (fake - batch.flip(0)).square().mean() - model["d"](fake).mean()
        return loss, {f"{phase}_metric": loss.item()}

    def tokens_in(self, batch):
        return batch.shape[0]

    def on_save(self, model, cfg, folder):
        pass

    def flops_per_token(self, model, cfg):
        return 0.0


def _two_player_cfg(out_dir: Path, *extra: str) -> Config:
    return load_config("tiny", [f"train.out_dir={out_dir}", "train.steps=4", "train.batch_size=8", "train.lr=1e-2",
                                "train.warmup_steps=1", "train.log_every=1", "train.ckpt_every=2", "train.tensorboard=false",
                                "train.keep_checkpoints=0", "train.grad_clip=0", *extra])


def test_several_optimisers_step_in_turn_like_a_hand_written_gan_loop(tmp_path):
    """Trainer with Task.optimizers: per step the d phase (its loss, backward, d's AdamW), then the g
    phase on the same batch; equals the loop written by hand, and g's loss never leaks into d's step."""
    cfg = _two_player_cfg(tmp_path / "run")
    task = _TwoPlayerTask()
    trainer = Trainer(cfg, task, argparse.Namespace(overwrite=False))
    trainer.fit()

    model = task.build_model(cfg)
    opts = {k: torch.optim.AdamW([{"params": [p for p in ps if p.dim() >= 2], "weight_decay": cfg.train.weight_decay},
                                  {"params": [p for p in ps if p.dim() < 2], "weight_decay": 0.0}],
                                 lr=cfg.train.lr, betas=cfg.train.betas)
            for k, ps in task.optimizers(model).items()}
    data = task.build_dataset(cfg)
    sampler = ResumableSampler(len(data), cfg.train.batch_size, 1, 0, 1, seed=cfg.train.seed)
    batches = iter(sampler)
    for step in range(cfg.train.steps):
        batch = task.collate([data[i] for i in next(batches)])
        for phase in ("d", "g"):
            model.zero_grad(set_to_none=True)
            task.loss(model, batch, phase)[0].backward()
            for group in opts[phase].param_groups:
                group["lr"] = lr_at(step, cfg)
            opts[phase].step()
    for name, p in model.state_dict().items():
        torch.testing.assert_close(trainer.module.state_dict()[name], p, rtol=0, atol=1e-6)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_d", "loss_g", "grad_norm_d", "grad_norm_g", "d_metric", "g_metric"} <= set(records[-1])
    step_dir = tmp_path / "run" / "checkpoints" / "step_0000002"
    assert (step_dir / "optimizer_d.safetensors").exists() or any(step_dir.glob("optimizer_d*"))


def test_several_optimisers_resume_exactly(tmp_path):
    Trainer(_two_player_cfg(tmp_path / "straight"), _TwoPlayerTask(), argparse.Namespace()).fit()
    Trainer(_two_player_cfg(tmp_path / "resumed"), _TwoPlayerTask(),
            argparse.Namespace(resume=str(tmp_path / "straight" / "checkpoints" / "step_0000002"))).fit()
    a, b = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert [a[s] for s in (3, 4)] == [b[s] for s in (3, 4)]


def test_several_optimisers_refuse_deepspeed(tmp_path):
    cfg = _two_player_cfg(tmp_path / "run")
    model = _TwoPlayerTask().build_model(cfg)
    with pytest.raises(ValueError, match="several optimisers"):
        build_engine(model, cfg, DistInfo(), "configs/deepspeed/zero2.json", False, _TwoPlayerTask().optimizers(model))
