"""Process groups and the three ways the Trainer drives a model: one process, FSDP2, DeepSpeed.

An :class:`Engine` hides the differences the training loop must not see: how a backward pass and an
optimizer step happen, and how full model / optimizer state is gathered for a checkpoint and put
back. The loop itself (omni/train/trainer.py) is the same for all three.

* :class:`TorchEngine` — plain torch AdamW, one process, or FSDP2 (``torch.distributed.fsdp.fully_shard``
  per decoder block + root) when ``sharded``. State goes through ``torch.distributed.checkpoint.state_dict``
  with ``full_state_dict=True``, so a one-process checkpoint and an FSDP2 checkpoint have the same layout
  (parameter-name keyed) and resume into each other.
* :class:`DeepSpeedEngine` — ``deepspeed.initialize`` with a ZeRO JSON. On CPU the client optimizer is
  torch AdamW (DeepSpeed's CPU Adam would JIT-compile); on GPU the JSON's optimizer is used. A
  checkpoint holds the fp32 masters and the full Adam moments, gathered from the ZeRO partitions by
  DeepSpeed's tensor-fragment API, in the one-process layout: a run resumes on any world size, ZeRO
  stage or engine (and a one-process or FSDP2 checkpoint resumes under DeepSpeed).

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


def decay_groups(model: nn.Module, weight_decay: float, params: Optional[list[nn.Parameter]] = None) -> list[dict[str, Any]]:
    """AdamW parameter groups of ``params`` (default: all of ``model``'s): matrices decay, vectors
    (norm gains, biases) do not."""
    params = [p for p in (model.parameters() if params is None else params) if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def adamw(model: nn.Module, cfg, params: Optional[list[nn.Parameter]] = None) -> torch.optim.AdamW:
    """torch AdamW over :func:`decay_groups` with the run's lr and betas."""
    return torch.optim.AdamW(decay_groups(model, cfg.train.weight_decay, params), lr=cfg.train.lr, betas=cfg.train.betas)


class Engine:
    """What the Trainer needs from a parallelism backend."""

    model: nn.Module  # call this for forward passes

    def backward(self, loss: Tensor, micro: int, grad_accum: int) -> None:
        raise NotImplementedError

    def step(self, lr: float, phase: Optional[str] = None) -> Optional[float]:
        """Clip, apply one optimizer step at ``lr`` (of ``phase``'s optimizer when the task declares
        several, :meth:`omni.train.task.Task.optimizers`), zero every gradient; returns the pre-clip
        gradient norm (None where the backend does not report one)."""
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
    """Plain AdamW on one process, or FSDP2 when ``sharded``. ``phases`` ({name: parameters}) gives
    one AdamW per phase (one process only), e.g. a GAN's discriminator and generator."""

    def __init__(self, model: nn.Module, cfg, sharded: bool = False,
                 phases: Optional[dict[str, list[nn.Parameter]]] = None) -> None:
        self.sharded, self.grad_clip = sharded, cfg.train.grad_clip
        if sharded:
            # One FSDP unit per decoder block (all-gathered just in time), then the root for the rest.
            for block in getattr(model, "layers", []):
                fully_shard(block)
            fully_shard(model)
        self.model = model
        self.optimizers = {name: adamw(model, cfg, params) for name, params in phases.items()} if phases else \
            {None: adamw(model, cfg)}
        self._save_opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        self._load_opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=sharded)

    def backward(self, loss: Tensor, micro: int, grad_accum: int) -> None:
        if self.sharded:  # reduce-scatter gradients only after the last micro-batch
            self.model.set_requires_gradient_sync(micro == grad_accum - 1)
        (loss / grad_accum).backward()

    def step(self, lr: float, phase: Optional[str] = None) -> float:
        optimizer = self.optimizers[phase]
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for group in optimizer.param_groups:
            group["lr"] = lr
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip or float("inf"))
        if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
            norm = norm.full_tensor()
        optimizer.step()
        # Every gradient, not only this optimizer's: a generator's loss also reaches the discriminator.
        self.model.zero_grad(set_to_none=True)
        return float(norm)

    @staticmethod
    def _state_name(phase: Optional[str]) -> str:
        return "optimizer" if phase is None else f"optimizer_{phase}"

    def model_state(self) -> dict[str, Tensor]:
        return get_model_state_dict(self.model, options=self._save_opts)

    def load_model_state(self, state: dict[str, Tensor]) -> None:
        if self.sharded and dist.get_rank() != 0:
            state = {}
        set_model_state_dict(self.model, state, options=self._load_opts)

    def save_optimizer(self, folder: Path, rank: int) -> None:
        for phase, optimizer in self.optimizers.items():
            state = get_optimizer_state_dict(self.model, optimizer, options=self._save_opts)
            if rank == 0:
                save_state(folder, self._state_name(phase), state)

    def load_optimizer(self, folder: Path, rank: int) -> None:
        for phase, optimizer in self.optimizers.items():
            state = load_state(folder, self._state_name(phase)) if rank == 0 or not self.sharded else {}
            set_optimizer_state_dict(self.model, optimizer, state, options=self._load_opts)


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
        self.model, self.device = self.engine, device

    def backward(self, loss: Tensor, micro: int, grad_accum: int) -> None:
        self.engine.backward(loss)  # DeepSpeed divides by gradient_accumulation_steps itself
        if micro < grad_accum - 1:
            self.engine.step()  # counts the micro-step; no optimizer update before the boundary

    def step(self, lr: float, phase: Optional[str] = None) -> Optional[float]:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.engine.step()  # at the accumulation boundary: clip, update, zero grads
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else None

    def _named_params(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.engine.module.named_parameters() if p.requires_grad]

    def model_state(self) -> dict[str, Tensor]:
        """Full fp32 weights on rank 0 (collective): the optimizer's fp32 masters of trained
        parameters (gathered from their ZeRO partitions), the module's own values for the rest."""
        from deepspeed.utils import safe_get_full_fp32_param

        module = self.engine.module
        masters = {n: safe_get_full_fp32_param(p) for n, p in self._named_params()}
        if self.stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(module.parameters())):
                rest = {k: _fp32(v).clone() for k, v in module.state_dict().items() if k not in masters}
        else:
            rest = {k: _fp32(v) for k, v in module.state_dict().items() if k not in masters}
        if dist.get_rank() != 0:
            return {}
        return {**rest, **{n: v.detach().cpu().float() for n, v in masters.items()}}

    def load_model_state(self, state: dict[str, Tensor]) -> None:
        """Full weights (on every rank) into the module and into the optimizer's fp32 masters."""
        from deepspeed.utils import safe_set_full_fp32_param

        module = self.engine.module
        if self.stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=0):
                if dist.get_rank() == 0:
                    module.load_state_dict(state)
        else:
            module.load_state_dict(state)
        for n, p in self._named_params():
            safe_set_full_fp32_param(p, state[n].to(self.device))

    def save_optimizer(self, folder: Path, rank: int) -> None:
        """The full optimizer state in the one-process / FSDP2 layout (``optimizer.safetensors``: Adam
        moments keyed by parameter name, ``param_groups`` naming their parameters), gathered from the
        ZeRO partitions with DeepSpeed's tensor-fragment API (collective). Any world size and any
        engine resumes from it: it is DeepSpeed's universal-checkpoint idea without its pickled files."""
        from deepspeed.utils import safe_get_full_optimizer_state

        self._link_optimizer_states()
        step = self._adam_step()
        state = {}
        for n, p in self._named_params():
            moments = {k: safe_get_full_optimizer_state(p, k) for k in ("exp_avg", "exp_avg_sq")}
            state[n] = {"step": torch.tensor(float(step)), **{k: v.detach().cpu().float() for k, v in moments.items()}}
        if rank == 0:
            save_state(folder, "optimizer", {"state": state, "param_groups": self._named_groups()})

    def load_optimizer(self, folder: Path, rank: int) -> None:
        """Adam moments and step from a full optimizer state (any engine, any world size)."""
        from deepspeed.utils import safe_set_full_optimizer_state

        if not (folder / "optimizer.safetensors").is_file():
            raise CheckpointError(f"{folder} holds no full optimizer state (optimizer.safetensors); it was written "
                                  "by an older omni whose DeepSpeed checkpoints resume only on the same world size")
        saved = load_state(folder, "optimizer")["state"]
        missing = [n for n, _ in self._named_params() if n not in saved]
        if missing:
            raise CheckpointError(f"{folder}: the optimizer state lacks {missing[:5]}; it belongs to another model")
        self._link_optimizer_states()
        for n, p in self._named_params():
            for k in ("exp_avg", "exp_avg_sq"):
                safe_set_full_optimizer_state(p, saved[n][k].to(self.device), k)
        step = float(next(iter(saved.values()))["step"])
        for st in self._base_optimizer().state.values():
            if "step" in st:
                st["step"] = torch.full_like(st["step"], step) if isinstance(st["step"], Tensor) else step

    def _link_optimizer_states(self) -> None:
        """Make the Adam states exist and be linked to each parameter's fragment, as the tensor-fragment
        API needs. DeepSpeed creates them at the first step (so a resume before it has none): a step
        with zero gradients at lr 0 creates them and changes no weight (AdamW's decay is lr x wd)."""
        opt, base = self.optimizer, self._base_optimizer()
        flats = getattr(opt, "single_partition_of_fp32_groups", None) or getattr(opt, "fp32_partitioned_groups_flat")
        if any(not base.state.get(f) for f in flats):  # state is a defaultdict: look, do not create
            lrs = [g["lr"] for g in base.param_groups]
            for f in flats:
                f.grad = torch.zeros_like(f)
            for g in base.param_groups:
                g["lr"] = 0.0
            for i in range(len(flats)):  # ZeRO's own per-group step (it sets the group's params first)
                opt._optimizer_step(i)
            for g, lr in zip(base.param_groups, lrs):
                g["lr"] = lr
            for f in flats:
                f.grad = None
        if hasattr(opt, "_hp_optimizer_states_linked"):  # ZeRO-1/2 link lazily, once
            opt._hp_optimizer_states_linked = False
            opt._lazy_init_hp_params_optimizer_state()

    def _base_optimizer(self) -> torch.optim.Optimizer:
        """The torch (or DeepSpeed) Adam inside the ZeRO wrapper."""
        return getattr(self.optimizer, "optimizer", self.optimizer)

    def _adam_step(self) -> float:
        steps = [st["step"] for st in self._base_optimizer().state.values() if "step" in st]
        return float(steps[0]) if steps else 0.0

    def _named_groups(self) -> list[dict[str, Any]]:
        """:func:`decay_groups` by parameter name, with the running hyper-parameters."""
        matrix = {n: len(getattr(p, "ds_shape", p.shape)) >= 2 for n, p in self._named_params()}  # ZeRO-3 flattens p
        hyper = [{k: v for k, v in g.items() if k != "params" and isinstance(v, (bool, int, float, str, tuple, type(None)))}
                 for g in self._base_optimizer().param_groups]
        groups = [[n for n, m in matrix.items() if m], [n for n, m in matrix.items() if not m]]
        return [{**hyper[min(i, len(hyper) - 1)], "params": g} for i, g in enumerate(groups)]


def _fp32(t: Tensor) -> Tensor:
    """``t`` on the CPU, floating point as float32 (bf16 training weights), other dtypes unchanged."""
    t = t.detach().cpu()
    return t.float() if t.is_floating_point() else t


def build_engine(model: nn.Module, cfg, info: DistInfo, deepspeed_json: Optional[str], fsdp: bool,
                 phases: Optional[dict[str, list[nn.Parameter]]] = None) -> Engine:
    """The engine the command line asks for: DeepSpeed, FSDP2 or plain; ``phases`` (several
    optimisers, :meth:`omni.train.task.Task.optimizers`) run on the plain engine only."""
    if deepspeed_json and fsdp:
        raise ValueError("pass --deepspeed or --fsdp, not both")
    if phases and (deepspeed_json or fsdp or info.world_size > 1):
        raise ValueError("a task with several optimisers trains on one process without --deepspeed/--fsdp")
    if deepspeed_json:
        return DeepSpeedEngine(model, cfg, deepspeed_json, info.device)
    if info.world_size > 1 and not fsdp:
        # Plain AdamW on every process would train N unsynchronised copies and keep rank 0's.
        raise ValueError(f"{info.world_size} processes need a data-parallel engine: add --fsdp or "
                         "--deepspeed configs/deepspeed/zero2.json (or run one process)")
    return TorchEngine(model, cfg, sharded=fsdp, phases=phases)
