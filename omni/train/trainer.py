"""The one training loop. It trains any :class:`omni.train.task.Task` on one process, FSDP2 or DeepSpeed.

Per optimizer step: ``grad_accum`` micro-batches (forward under bf16 autocast on CUDA, backward), each
loss normalised by the number of targets in the whole step across micro-batches and ranks
(:meth:`Task.step_loss`),
gradient clipping, AdamW at the warmup+cosine learning rate, then logging (console via tqdm,
TensorBoard, ``metrics.jsonl``) and, every ``train.ckpt_every`` steps, an atomic checkpoint.

Throughput: tokens/s counts ``Task.tokens_in`` over all ranks. MFU (CUDA only) =
tokens/s per GPU x ``Task.flops_per_token`` / peak FLOP/s, where the LM's FLOPs per token are
6·N (N = parameters in matmuls, the logit projection included) + 6·n_layers·seq_len·dim (causal
attention scores and values, forward + backward), and the peak comes from ``train.peak_flops`` or
:data:`PEAK_FLOPS` by device name (bf16 dense).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm import tqdm

# TensorBoard logging (setup.py installs tensorboard): without it, train.tensorboard=true raises ImportError.
try:
    from torch.utils.tensorboard import SummaryWriter
except ImportError:
    SummaryWriter = None

from omni.config import RUN_SECTIONS, SERVING_SECTIONS, Config, save_config
from omni.train.checkpoint import (CheckpointError, begin_save, config_mismatch, finish_save, load_config_file,
                                   load_state, load_tensors, read_trainer_state, resolve_checkpoint, rng_state,
                                   save_state, save_tensors, set_rng_state, tmp_folder)
from omni.train.distributed import all_reduce_sum, barrier, build_engine, setup_distributed
from omni.train.sampler import ResumableSampler
from omni.train.shards import ShardStream
from omni.train.task import Task

# Subnormal floats take a slow path in CPU kernels: a trained codec's training step went from 0.20 s
# to 0.95 s once they appeared. Flushing them to zero changes nothing above 1e-38.
torch.set_flush_denormal(True)

# Dense bf16 peak FLOP/s by (substring of) CUDA device name, for MFU.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "4090": 165e12}


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; training stopped without saving."""


class RunExistsError(RuntimeError):
    """The output folder already holds a run and neither --resume nor --overwrite was given."""


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """The records a run logged to ``run/metrics.jsonl``, one dict per logged step, oldest first."""
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def lr_at(step: int, cfg: Config) -> float:
    """Linear warmup over ``warmup_steps`` to ``lr``, then cosine decay to ``min_lr`` at ``steps``."""
    t = cfg.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = min(1.0, (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps))
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1.0 + math.cos(math.pi * progress))


def peak_flops(cfg: Config, device: torch.device) -> float:
    """Peak FLOP/s for MFU: ``train.peak_flops`` if set, else looked up by GPU name; 0 on CPU."""
    if cfg.train.peak_flops > 0:
        return cfg.train.peak_flops
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), 0.0)


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class Trainer:
    """``Trainer(cfg, task, args).fit()``. ``args``: deepspeed (JSON path or None), fsdp (bool),
    resume (None = fresh run, "" = this run's out_dir, or a run/step folder), overwrite (bool)."""

    def __init__(self, cfg: Config, task: Task, args: argparse.Namespace) -> None:
        self.cfg, self.task = cfg, task
        ds_json, fsdp = getattr(args, "deepspeed", None), getattr(args, "fsdp", False)
        resume, overwrite = getattr(args, "resume", None), getattr(args, "overwrite", False)
        self.info = setup_distributed(use_deepspeed=bool(ds_json), fsdp=fsdp)
        self.run_dir = Path(cfg.train.out_dir)
        self._prepare_run_dir(resume, overwrite)
        t = cfg.train
        self.device = self.info.device
        torch.manual_seed(t.seed)  # identical initial weights on every rank and every engine

        self.module = task.build_model(cfg)
        self.dataset = task.build_dataset(cfg, "train")
        if self.resume_from is None and not t.finetune_from:  # a checkpoint's weights would replace the fit
            task.fit_to_data(self.module, self.dataset)
        self.module = self.module.to(self.device)
        if t.activation_checkpointing:
            if not hasattr(self.module, "activation_checkpointing"):
                raise ValueError(f"train.activation_checkpointing: {type(self.module).__name__} does not support it")
            self.module.activation_checkpointing = True
        if isinstance(self.dataset, ShardStream):  # streamed shards: the stream is its own resumable sampler
            self.dataset.configure(self.info.rank, self.info.world_size, cfg.data.num_workers, t.batch_size)
            self.sampler = self.dataset
        else:
            self.sampler = ResumableSampler(len(self.dataset), t.batch_size, t.grad_accum, self.info.rank,
                                            self.info.world_size, seed=t.seed)
        self.phases = task.optimizers(self.module)
        self.engine = build_engine(self.module, cfg, self.info, ds_json, fsdp, self.phases)
        self.step = 0
        self.autocast = self._autocast()
        self.flops_per_token = task.flops_per_token(self.module, cfg)
        self.peak = peak_flops(cfg, self.device)
        if self.resume_from is not None:
            self._load(self.resume_from)
        elif t.finetune_from:
            self._finetune_from(resolve_checkpoint(t.finetune_from, required=("model.safetensors",)))

    # ---- run folder --------------------------------------------------------------------------
    def _prepare_run_dir(self, resume: Optional[str], overwrite: bool) -> None:
        run = self.run_dir
        occupied = run.exists() and any(run.iterdir())
        self.resume_from: Optional[Path] = None
        if resume is not None:
            self.resume_from = resolve_checkpoint(resume or run)
        elif occupied and not overwrite:
            raise RunExistsError(
                f"{run} already holds a run: pass --resume to continue it, --overwrite to replace it, "
                f"or choose another train.out_dir"
            )
        barrier()  # every rank has looked before rank 0 creates the folder
        if self.info.is_main:
            if occupied and overwrite and resume is None:
                shutil.rmtree(run)
            run.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, run / "config.yaml")
        barrier()

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = self.cfg.train.dtype
        if dtype == "bf16" or (dtype == "auto" and self.device.type == "cuda"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---- checkpoints -------------------------------------------------------------------------
    def save(self) -> Path:
        """Write an atomic checkpoint of the current step (collective: every rank calls it)."""
        rank, main = self.info.rank, self.info.is_main
        model_state = self.engine.model_state()
        if main:
            begin_save(self.run_dir, self.step)
        barrier()
        tmp = tmp_folder(self.run_dir, self.step)
        self.engine.save_optimizer(tmp, rank)
        save_state(tmp, f"rng_rank{rank:05d}", rng_state())
        sampler_state = self.sampler.state_dict()  # collective for a ShardStream (gathers every rank's readers)
        if main:
            save_tensors(model_state, tmp / "model.safetensors")
            save_config(self.cfg, tmp / "config.yaml")
            self.task.on_save(self.module, self.cfg, str(tmp))
            state = {"step": self.step, "lr": lr_at(self.step, self.cfg), "sampler": sampler_state,
                     "world_size": self.info.world_size, "engine": type(self.engine).__name__}
            (tmp / "trainer.json").write_text(json.dumps(state, indent=1))
        barrier()
        final = self.run_dir / "checkpoints" / tmp.name.removeprefix(".tmp_")
        if main:
            final = finish_save(self.run_dir, self.step, self.cfg.train.keep_checkpoints)
        barrier()
        return final

    def _load(self, step_dir: Path) -> None:
        identity = tuple(k for k in self.cfg.to_dict() if k not in ("name", *RUN_SECTIONS, *SERVING_SECTIONS))
        diff = config_mismatch(load_config_file(step_dir / "config.yaml"), self.cfg, sections=identity)
        if diff:
            raise CheckpointError(f"{step_dir} was trained with a different config: " + "; ".join(diff))
        self.engine.load_model_state(load_tensors(step_dir / "model.safetensors"))
        self.engine.load_optimizer(step_dir, self.info.rank)
        state = read_trainer_state(step_dir)
        self.step = int(state["step"])
        self.sampler.load_state_dict(state["sampler"])
        rng_name = f"rng_rank{self.info.rank:05d}"
        set_rng_state(load_state(step_dir, rng_name if (step_dir / f"{rng_name}.json").exists() else "rng_rank00000"))
        if self.info.is_main:
            tqdm.write(f"resumed from {step_dir} at step {self.step}")

    def _finetune_from(self, step_dir: Path) -> None:
        """``train.finetune_from``: the model starts from the weights of ``step_dir`` (a step folder or
        any folder holding ``model.safetensors``, cast to the model's dtype);
        optimiser, schedule and data order start afresh at step 0. Raises CheckpointError if the
        weights do not fit the model this config builds, or if the checkpoint's vocabulary layout
        (``vocab.json``) differs from the corpus's."""
        saved_vocab = step_dir / "vocab.json"
        corpus_vocab = getattr(self.dataset, "vocab", None)
        if saved_vocab.exists() and corpus_vocab is not None and json.loads(saved_vocab.read_text()) != corpus_vocab.to_dict():
            raise CheckpointError(f"train.finetune_from={step_dir}: its vocabulary differs from the corpus in {self.cfg.data.path}; "
                                  "build the corpus with the checkpoint's tokenizers (its tokenizers/ folder)")
        try:
            self.engine.load_model_state(load_tensors(step_dir / "model.safetensors"))
        except RuntimeError as e:
            raise CheckpointError(f"train.finetune_from={step_dir}: its weights do not fit the model of this config "
                                  f"(model and omni sections must match the checkpoint's config.yaml): {e}") from e
        if self.info.is_main:
            tqdm.write(f"initialised from {step_dir} (step 0, fresh optimiser)")

    # ---- the loop ----------------------------------------------------------------------------
    def fit(self) -> Optional[Path]:
        """Train to ``train.steps``; returns the last checkpoint folder."""
        cfg, t, info = self.cfg, self.cfg.train, self.info
        if isinstance(self.dataset, ShardStream):
            batches = self.dataset.batches(pin_memory=self.device.type == "cuda")
        else:
            batches = iter(torch.utils.data.DataLoader(
                self.dataset, batch_sampler=self.sampler, collate_fn=self.task.collate,
                num_workers=cfg.data.num_workers, pin_memory=self.device.type == "cuda"))
        tb = self._tensorboard()
        log = open(self.run_dir / "metrics.jsonl", "a") if info.is_main else None
        bar = tqdm(total=t.steps, initial=self.step, disable=not info.is_main, desc=cfg.name, dynamic_ncols=True)
        last: Optional[Path] = None
        window_tokens, window_start = 0, time.perf_counter()
        self.engine.model.train()
        try:
            while self.step < t.steps:
                lr = lr_at(self.step, cfg)
                # Every loss is a mean over the targets of the whole step (all micro-batches, all
                # ranks), not a mean of per-micro-batch means: count them first (Task.step_loss).
                micro_batches = [to_device(next(batches), self.device) for _ in range(t.grad_accum)]
                counts = [self.task.targets(b) for b in micro_batches]
                keys = sorted({k for c in counts for k in c})
                summed = all_reduce_sum(torch.tensor([sum(c.get(k, 0.0) for c in counts) for k in keys], dtype=torch.float64))
                totals = {k: float(v) or 1.0 for k, v in zip(keys, summed)}  # a term no row has: its sums are 0
                tokens = sum(self.task.tokens_in(b) for b in micro_batches)
                losses, sums = [], {}
                for phase in self.phases or [None]:  # several optimisers: one phase each, in order
                    phase_loss = torch.zeros((), dtype=torch.float64)
                    for micro, batch in enumerate(micro_batches):
                        with self.autocast:
                            loss, metrics = self.task.step_loss(self.engine.model, batch, totals, phase)
                        # The engines average over micro-batches and ranks; the shares must add up instead.
                        self.engine.backward(loss * (t.grad_accum * info.world_size), micro, t.grad_accum)
                        phase_loss += loss.detach().double().cpu()
                        for k, v in metrics.items():
                            sums[k] = sums.get(k, 0.0) + float(v)
                    grad_norm = self.engine.step(lr, phase)
                    losses.append(phase_loss)
                    if phase is not None:
                        sums[f"loss_{phase}"] = float(phase_loss)
                        if grad_norm is not None:
                            sums[f"grad_norm_{phase}"] = grad_norm
                del micro_batches
                self.step += 1
                self.sampler.advance()
                names = sorted(sums)
                values = all_reduce_sum(torch.stack([torch.stack(losses).sum(),
                                                     *[torch.tensor(sums[k], dtype=torch.float64) for k in names]]))
                loss_value = float(values[0])
                for what, value in (("loss", loss_value), ("gradient norm", grad_norm)):
                    if value is not None and not math.isfinite(value):
                        raise TrainingDiverged(
                            f"{what} became {value} at step {self.step} (lr {lr:.3g}); stopped without saving, the "
                            f"last good checkpoint is {self._latest() or 'none'}. Lower train.lr, raise "
                            "train.warmup_steps or check the data, then --resume."
                        )
                window_tokens += tokens * info.world_size
                record = {"step": self.step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                          **{k: float(v) for k, v in zip(names, values[1:])}}
                if self.step % t.log_every == 0 or self.step == t.steps:
                    if self.device.type == "cuda":
                        torch.cuda.synchronize()
                    elapsed = time.perf_counter() - window_start
                    record["tokens_per_s"] = window_tokens / elapsed
                    if self.peak and self.flops_per_token:
                        record["mfu"] = record["tokens_per_s"] / info.world_size * self.flops_per_token / self.peak
                    window_tokens, window_start = 0, time.perf_counter()
                    if info.is_main:
                        bar.write(self._format(record))
                if info.is_main:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    if tb is not None:
                        for k, v in record.items():
                            if k != "step" and v is not None:
                                tb.add_scalar(f"train/{k}", v, self.step)
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
                    bar.update(1)
                if self.step % t.ckpt_every == 0 or self.step == t.steps:
                    last = self.save()
        finally:
            bar.close()
            if log is not None:
                log.close()
            if tb is not None:
                tb.close()
        if info.is_main and last is not None:
            tqdm.write(f"checkpoint: {last}")
        return last

    def _latest(self) -> Optional[Path]:
        try:
            return resolve_checkpoint(self.run_dir)
        except CheckpointError:
            return None

    def _tensorboard(self) -> Any:
        if not (self.cfg.train.tensorboard and self.info.is_main):
            return None
        if SummaryWriter is None:
            raise ImportError("TensorBoard logging needs `pip install tensorboard` (or set train.tensorboard=false)")
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    @staticmethod
    def _format(r: dict[str, Any]) -> str:
        parts = [f"step {r['step']}", f"loss {r['loss']:.4f}", f"lr {r['lr']:.2e}"]
        if r["grad_norm"] is not None:
            parts.append(f"grad {r['grad_norm']:.3f}")
        parts += [f"{k} {v:.4g}" for k, v in r.items() if k not in ("step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu")]
        parts.append(f"{r['tokens_per_s']:.0f} tok/s")
        if "mfu" in r:
            parts.append(f"MFU {100 * r['mfu']:.1f}%")
        return " | ".join(parts)
