"""Process groups and the three ways the Trainer drives a model: one process, FSDP2, DeepSpeed.

An :class:`Engine` hides the differences the training loop must not see: how a backward pass and an
optimizer step happen, and how full model / optimizer state is gathered for a checkpoint and put
back. The loop itself (omni/train/trainer.py) is the same for all three.

* :class:`TorchEngine` — plain torch AdamW, one process, or FSDP2 (``torch.distributed.fsdp.fully_shard``
  per decoder block + root) when ``sharded``. State goes through ``torch.distributed.checkpoint.state_dict``
  with ``full_state_dict=True``, so a one-process checkpoint and an FSDP2 checkpoint have the same layout
  (parameter-name keyed) and resume into each other.
* :class:`DeepSpeedEngine` — ``deepspeed.initialize`` with a ZeRO JSON. On CPU the client optimizer is
  torch AdamW (DeepSpeed's CPU Adam would JIT-compile); on GPU the JSON's optimizer is used. Optimizer
  state stays partitioned: each rank writes its own ZeRO state dict (tensors in safetensors).

Both run on CPU with gloo and on GPUs with NCCL; ``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.fsdp import fully_shard

from omni.train.checkpoint import CheckpointError, load_state, save_state

Tensor = torch.Tensor


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(use_deepspeed: bool = False, fsdp: bool = False) -> DistInfo:
    """Join the process group torchrun describes (RANK/WORLD_SIZE set), or stay single-process.

    Backend: NCCL with CUDA, gloo otherwise. DeepSpeed joins through ``deepspeed.init_distributed``
    so its communication layer knows the group. ``--deepspeed``/``--fsdp`` without torchrun form a
    group of one.
    """
    if use_deepspeed or fsdp:
        for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": "29511"}.items():
            os.environ.setdefault(key, value)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if use_deepspeed and not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported
    if world > 1 or use_deepspeed or fsdp:
        backend = "nccl" if cuda else "gloo"
        if use_deepspeed:
            import deepspeed

            if not cuda:
                # DeepSpeed's CPU backend would JIT-compile a shared-memory all-reduce (minutes on a
                # small box) that ZeRO training does not need: gloo does the collectives.
                deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
            deepspeed.init_distributed(dist_backend=backend)
        elif not dist.is_initialized():
            dist.init_process_group(backend)
    return DistInfo(rank, world, local_rank, device)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum of ``x`` over ranks (identity on one process); NCCL reduces on the GPU, the result comes
    back on ``x``'s device."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        y = x.to("cuda") if dist.get_backend() == "nccl" else x.clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        x = y.to(x.device)
    return x


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: matrices decay, vectors (norm gains, biases) do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def adamw(model: nn.Module, cfg) -> torch.optim.AdamW:
    """torch AdamW over :func:`decay_groups` with the run's lr and betas."""
    return torch.optim.AdamW(decay_groups(model, cfg.train.weight_decay), lr=cfg.train.lr, betas=cfg.train.betas)


class Engine:
    """What the Trainer needs from a parallelism backend."""

    model: nn.Module  # call this for forward passes

    def backward(self, loss: Tensor, micro: int, grad_accum: int) -> None:
        raise NotImplementedError

    def step(self, lr: float) -> Optional[float]:
        """Clip, apply one optimizer step at ``lr``, zero grads; returns the pre-clip gradient norm
        (None where the backend does not report one)."""
        raise NotImplementedError

    def model_state(self) -> dict[str, Tensor]:
        """Full model state dict on rank 0 (gathered if sharded); may be empty on other ranks."""
        raise NotImplementedError

    def load_model_state(self, state: dict[str, Tensor]) -> None:
        """Load a full state dict (given on every rank)."""
        raise NotImplementedError

    def save_optimizer(self, folder: Path, rank: int) -> None:
        raise NotImplementedError

    def load_optimizer(self, folder: Path, rank: int) -> None:
        raise NotImplementedError


class TorchEngine(Engine):
    """Plain AdamW on one process, or FSDP2 when ``sharded``."""

    def __init__(self, model: nn.Module, cfg, sharded: bool = False) -> None:
        self.sharded, self.grad_clip = sharded, cfg.train.grad_clip
        if sharded:
            # One FSDP unit per decoder block (all-gathered just in time), then the root for the rest.
            for block in getattr(model, "layers", []):
                fully_shard(block)
            fully_shard(model)
        self.model = model
        self.optimizer = adamw(model, cfg)
        self._save_opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        self._load_opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=sharded)

    def backward(self, loss: Tensor, micro: int, grad_accum: int) -> None:
        if self.sharded:  # reduce-scatter gradients only after the last micro-batch
            self.model.set_requires_gradient_sync(micro == grad_accum - 1)
        (loss / grad_accum).backward()

    def step(self, lr: float) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip or float("inf"))
        if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
            norm = norm.full_tensor()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def model_state(self) -> dict[str, Tensor]:
        return get_model_state_dict(self.model, options=self._save_opts)

    def load_model_state(self, state: dict[str, Tensor]) -> None:
        if self.sharded and dist.get_rank() != 0:
            state = {}
        set_model_state_dict(self.model, state, options=self._load_opts)

    def save_optimizer(self, folder: Path, rank: int) -> None:
        state = get_optimizer_state_dict(self.model, self.optimizer, options=self._save_opts)
        if rank == 0:
            save_state(folder, "optimizer", state)

    def load_optimizer(self, folder: Path, rank: int) -> None:
        state = load_state(folder, "optimizer") if rank == 0 or not self.sharded else {}
        set_optimizer_state_dict(self.model, self.optimizer, state, options=self._load_opts)


# ZeRO state-dict entries that describe the live engine (objects, not data): not saved, and taken
# from the running optimizer when loading.
_DS_LIVE_KEYS = {"loss_scaler": "loss_scaler", "param_slice_mappings": "_param_slice_mappings"}


def deepspeed_config(path: str, cfg, cuda: bool) -> dict[str, Any]:
    """Read a DeepSpeed JSON and fill its ``"auto"`` entries from the omni config."""
    try:
        ds = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--deepspeed {path}: cannot read the DeepSpeed JSON ({e})") from e
    t = cfg.train
    fill = {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": t.grad_clip,
    }
    for key, value in fill.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
        elif ds[key] != value:
            raise ValueError(f"{path}: {key}={ds[key]} disagrees with the config ({value}); set it to \"auto\"")
    ds.pop("train_batch_size", None)  # derived by DeepSpeed from the two above and the world size
    bf16 = cuda and t.dtype in ("auto", "bf16")
    ds.setdefault("bf16", {})["enabled"] = bf16
    ds.setdefault("steps_per_print", 10**9)  # we log ourselves
    if not cuda:
        ds.pop("optimizer", None)  # a torch client optimizer instead of a JIT-compiled CPU Adam
    else:
        for key, value in {"lr": t.lr, "betas": list(t.betas), "weight_decay": t.weight_decay}.items():
            params = ds.get("optimizer", {}).get("params", {})
            if params.get(key, "auto") == "auto":
                params[key] = value
    return ds


class DeepSpeedEngine(Engine):
    """DeepSpeed ZeRO (stage from the JSON)."""

    def __init__(self, model: nn.Module, cfg, ds_config_path: str, device: torch.device) -> None:
        import deepspeed

        # DeepSpeed 0.19 calls collectives that torch 2.13 marks deprecated, once per step: not ours to fix.
        warnings.filterwarnings("ignore", message=r".*torch\.distributed\.\w+` is deprecated", category=FutureWarning)
        ds = deepspeed_config(ds_config_path, cfg, device.type == "cuda")
        optimizer = None
        if "optimizer" not in ds:
            optimizer = adamw(model, cfg)
            params = None
        else:
            params = decay_groups(model, cfg.train.weight_decay)
        self.stage = ds.get("zero_optimization", {}).get("stage", 0)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, model_parameters=params, config=ds)
        self.model = self.engine

    def backward(self, loss: Tensor, micro: int, grad_accum: int) -> None:
        self.engine.backward(loss)  # DeepSpeed divides by gradient_accumulation_steps itself
        if micro < grad_accum - 1:
            self.engine.step()  # counts the micro-step; no optimizer update before the boundary

    def step(self, lr: float) -> Optional[float]:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.engine.step()  # at the accumulation boundary: clip, update, zero grads
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else None

    def model_state(self) -> dict[str, Tensor]:
        if self.stage == 3:
            # Gathers the partitioned parameters onto rank 0 (in their training dtype: bf16 on GPUs; the
            # fp32 masters are in the optimizer state). DeepSpeed's public save_16bit_model would pickle.
            return self.engine._zero3_consolidated_16bit_state_dict() or {}
        return {k: v.detach().cpu() for k, v in self.engine.module.state_dict().items()}

    def load_model_state(self, state: dict[str, Tensor]) -> None:
        module = self.engine.module
        if self.stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=0):
                if dist.get_rank() == 0:
                    module.load_state_dict(state)
        else:
            module.load_state_dict(state)

    def save_optimizer(self, folder: Path, rank: int) -> None:
        state = {k: v for k, v in self.optimizer.state_dict().items() if k not in _DS_LIVE_KEYS}
        save_state(folder, f"optimizer_rank{rank:05d}", state)

    def load_optimizer(self, folder: Path, rank: int) -> None:
        world = dist.get_world_size()
        saved = sorted(folder.glob("optimizer_rank*.safetensors"))
        if not saved:
            raise CheckpointError(f"{folder} was not written by DeepSpeed (no optimizer_rank* files): resume it "
                                  "without --deepspeed (one process or --fsdp)")
        if len(saved) != world:
            raise CheckpointError(f"{folder} holds ZeRO optimizer state of {len(saved)} ranks, this run has {world}: "
                                  "resume DeepSpeed runs with the same number of processes")
        states = [load_state(folder, f"optimizer_rank{r:05d}") for r in range(world)]
        for s in states:
            for key, attr in _DS_LIVE_KEYS.items():
                s[key] = getattr(self.optimizer, attr, None)
        self.optimizer.load_state_dict(states, load_optimizer_states=True, load_from_fp32_weights=True)


def build_engine(model: nn.Module, cfg, info: DistInfo, deepspeed_json: Optional[str], fsdp: bool) -> Engine:
    """The engine the command line asks for: DeepSpeed, FSDP2 or plain."""
    if deepspeed_json and fsdp:
        raise ValueError("pass --deepspeed or --fsdp, not both")
    if deepspeed_json:
        return DeepSpeedEngine(model, cfg, deepspeed_json, info.device)
    return TorchEngine(model, cfg, sharded=fsdp)
