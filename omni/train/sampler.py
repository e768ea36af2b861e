"""A rank-aware sampler that resumes exactly: its whole state is (epoch, position, seed).

Every epoch is one seeded permutation of the dataset, shared by all ranks. Training consumes it in
*global batches* of ``G = batch_size * grad_accum * world_size`` rows; rank ``r`` takes rows
``r, r + world, r + 2·world, ...`` of each global batch. So a step sees the same rows whatever the
world size (1 process with batch 8 == 2 processes with batch 4), and ``position`` (rows of the
epoch already consumed, globally) is all a checkpoint needs; a resumed run may even change world
size. The trailing partial global batch of an epoch is dropped so every step has G rows.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch


class ResumableSampler(torch.utils.data.Sampler):
    """Yields micro-batches (lists of dataset indices) for this rank, forever, from a saved state.

    The iterator works on its own copy of the state, so a DataLoader may prefetch freely; the
    trainer calls :meth:`advance` once per optimizer step to record what training really consumed.
    """

    def __init__(self, num_rows: int, batch_size: int, grad_accum: int = 1, rank: int = 0,
                 world_size: int = 1, seed: int = 0, shuffle: bool = True) -> None:
        self.global_batch = batch_size * grad_accum * world_size
        if num_rows < self.global_batch:
            raise ValueError(
                f"the dataset has {num_rows} rows, fewer than one global batch of {self.global_batch} "
                "(batch_size x grad_accum x world_size): build a bigger corpus or lower train.batch_size"
            )
        self.num_rows, self.batch_size, self.rank, self.world_size = num_rows, batch_size, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.position = 0, 0
        self.steps_per_epoch = num_rows // self.global_batch

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_rows)
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.num_rows, generator=g)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, position = self.epoch, self.position
        while True:
            order = self._order(epoch)
            while position + self.global_batch <= self.steps_per_epoch * self.global_batch:
                mine = order[position + self.rank : position + self.global_batch : self.world_size].tolist()
                for i in range(0, len(mine), self.batch_size):
                    yield mine[i : i + self.batch_size]
                position += self.global_batch
            epoch, position = epoch + 1, 0

    def __len__(self) -> int:  # micro-batches per epoch on this rank
        return self.steps_per_epoch * self.global_batch // (self.world_size * self.batch_size)

    def advance(self, steps: int = 1) -> None:
        """Record that ``steps`` optimizer steps (global batches) were consumed."""
        for _ in range(steps):
            self.position += self.global_batch
            if self.position + self.global_batch > self.steps_per_epoch * self.global_batch:
                self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "num_rows": self.num_rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_rows"] != self.num_rows or state["seed"] != self.seed:
            raise ValueError(
                f"the checkpoint's sampler was over {state['num_rows']} rows with seed {state['seed']}, this run has "
                f"{self.num_rows} rows with seed {self.seed}: resume on the same corpus, data.seq_len and train.seed"
            )
        if state["position"] % self.global_batch:
            raise ValueError(
                f"checkpoint position {state['position']} is not a multiple of the global batch {self.global_batch}: "
                "keep batch_size x grad_accum x world_size unchanged when resuming mid-epoch"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
