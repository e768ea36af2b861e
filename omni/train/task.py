"""What train.py trains: a :class:`Task` supplies model, data and loss; the Trainer does the rest.

The one training loop (omni/train/trainer.py) owns optimisation, precision, DeepSpeed/FSDP2,
gradient accumulation, the resumable sampler, logging and checkpoints. A task only says *what*:

    @register_task("codec")
    class CodecTask(Task):
        def build_model(self, cfg): ...
        def build_dataset(self, cfg): ...      # a map-style dataset of examples
        def loss(self, model, batch): ...       # -> (scalar loss, {"name": float, ...})

``python train.py --config configs/X.yaml`` builds the Trainer for ``cfg.task`` (or ``--task NAME``).
A task whose training is not "minimise a loss over a dataset" (e.g. PPO) sets ``own_loop`` and
overrides :meth:`Task.run` instead. This module imports nothing from the trainer.
"""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from omni.config import Config

Tensor = torch.Tensor


class Task:
    """Base class. Subclasses implement build_model / build_dataset / loss (or override run)."""

    name: str = "task"

    def build_model(self, cfg: Config) -> nn.Module:
        raise NotImplementedError

    def build_dataset(self, cfg: Config, split: str = "train") -> torch.utils.data.Dataset:
        """A map-style dataset; the Trainer shards and orders it with a resumable, rank-aware sampler."""
        raise NotImplementedError

    def fit_to_data(self, model: nn.Module, dataset: torch.utils.data.Dataset) -> None:
        """Set weights that are fitted to the training ``dataset`` rather than learnt (e.g. a codec's
        encoder statistics and codebooks). The Trainer calls it once, before the first step, and
        only for a run that starts from no checkpoint: ``--resume`` and ``train.finetune_from`` load
        those weights instead. Default: nothing."""

    def collate(self, items: list[Any]) -> Any:
        """Stack examples into a batch (default: torch's default_collate)."""
        return torch.utils.data.default_collate(items)

    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        """Scalar training loss (a mean over the batch) and named float metrics to log. A task with
        several optimisers takes a third argument, the phase (a key of :meth:`optimizers`)."""
        raise NotImplementedError

    def optimizers(self, model: nn.Module) -> Optional[dict[str, list[nn.Parameter]]]:
        """Several optimisers, e.g. a GAN's: ``{phase: parameters}``. Each step the Trainer runs the
        phases in this order on the same batch: ``loss(model, batch, phase)``, its backward, and that
        phase's AdamW step (every gradient is zeroed after each). None (default): one AdamW over all
        parameters and ``loss(model, batch)``."""
        return None

    def targets(self, batch: Any) -> dict[str, float]:
        """How many targets each loss term of ``batch`` averages over, by term name. The Trainer sums
        them over an optimiser step's micro-batches and ranks and hands the totals to
        :meth:`step_loss`. Default: one term, ``examples`` = rows in the batch."""
        return {"examples": float(batch_rows(batch))}

    def step_loss(self, model: nn.Module, batch: Any, totals: dict[str, float],
                  phase: Optional[str] = None) -> tuple[Tensor, dict[str, float]]:
        """This micro-batch's share of the optimiser step's loss and metrics: sums over its targets
        divided by ``totals`` (the :meth:`targets` of every micro-batch on every rank), so that the
        shares add up, over micro-batches and ranks, to the mean over all the step's targets — the
        same gradient whatever the split into micro-batches and processes. Default: :meth:`loss`
        (of ``phase`` for a task with several optimisers) weighted by this batch's share of the
        step's examples; tasks whose rows hold different numbers of targets (omni, rbr-sft) override
        both methods."""
        loss, metrics = self.loss(model, batch) if phase is None else self.loss(model, batch, phase)
        share = self.targets(batch)["examples"] / totals["examples"]
        return loss * share, {k: float(v) * share for k, v in metrics.items()}

    def tokens_in(self, batch: Any) -> int:
        """Tokens (or frames/samples) processed in ``batch``, for throughput logging."""
        return 0

    def flops_per_token(self, model: nn.Module, cfg: Config) -> float:
        """Training FLOPs per token for MFU (0 = not reported)."""
        return 0.0

    def on_save(self, model: nn.Module, cfg: Config, folder: str) -> None:
        """Extra artefacts to write beside a checkpoint (e.g. a tokenizer folder)."""

    def demo(self, model: nn.Module, cfg: Config) -> Optional[str]:
        """A short human-readable sample after training (generated text, a reconstruction metric, ...)."""
        return None

    # True for a task whose training is not "minimise a loss over a dataset" (e.g. PPO): train.py then
    # calls its run() instead of building the shared Trainer.
    own_loop: bool = False

    def run(self, cfg: Config, args: argparse.Namespace) -> None:
        """Train with the task's own loop (only when :attr:`own_loop` is True)."""
        raise NotImplementedError(f"task {self.name!r} trains with the shared Trainer (omni/train/trainer.py)")


class TokenizerTask(Task):
    """Common part: the model is ``tokenizer_cls(cfg.section(section))``; checkpoints carry ``tokenizer/``."""

    tokenizer_cls: type
    section: str

    def build_model(self, cfg: Config) -> nn.Module:
        return self.tokenizer_cls(cfg.section(self.section))

    def on_save(self, model: nn.Module, cfg: Config, folder: str) -> None:
        model.save(Path(folder) / "tokenizer")


def batch_rows(batch: Any) -> int:
    """Rows of a batch: the leading size of its first tensor (a tensor, or one inside a dict/list)."""
    if isinstance(batch, Tensor):
        return batch.shape[0]
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for v in values:
        if isinstance(v, Tensor):
            return v.shape[0]
    raise TypeError(f"cannot count the rows of a {type(batch).__name__} batch; override Task.targets")


_TASKS: dict[str, Callable[[], Task]] = {}


def register_task(name: str) -> Callable[[type], type]:
    """Class decorator: ``train.py --task NAME`` (or ``task: NAME`` in YAML) builds this task."""

    def wrap(cls: type) -> type:
        cls.name = name
        _TASKS[name] = cls
        return cls

    return wrap


# Modules that define tasks; imported lazily so `train.py --task lm` does not import codec code.
TASK_MODULES = {
    "lm": "omni.train.tasks.lm",
    "rbr-grader": "omni.align.tasks",
    "rbr-rm": "omni.align.tasks",
    "rbr-ppo": "omni.align.ppo",
    "rbr-sft": "omni.align.tasks",
    "codec": "omni.train.tasks.codec",
    "image": "omni.train.tasks.image",
    "video": "omni.train.tasks.video",
    "vocoder": "omni.train.tasks.vocoder",
    "omni": "omni.train.tasks.omni",
}


def get_task(name: str) -> Task:
    """The registered task ``name``; a clear error listing the known ones otherwise."""
    if name not in _TASKS and name in TASK_MODULES:
        importlib.import_module(TASK_MODULES[name])
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(set(TASK_MODULES) | set(_TASKS))}")
    return _TASKS[name]()
