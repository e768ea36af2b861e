"""Tokenized corpora as WebDataset-style tar shards, streamed into packed training rows.

Corpus folder (written by data/shards.py; format ``omni-shards-v1``, docs/data.md)::

    index.json                {"format": "omni-shards-v1", "vocab": OmniVocab, "tokenizers": {...},
                               "splits": {"train": [{"file": "train-000000.tar", "samples": n,
                               "positions": p, "bytes": b}, ...], "val": [...]}, "tasks": {...}, "skipped": {...}}
    train-000000.tar          one conversation per sample, WebDataset conventions: members
                              KEY.tokens.npy (int32 [n]), KEY.audio.npy (int16 [n, K]), KEY.span.npy
                              (int32 [n]), KEY.loss.npy (bool [n]), KEY.modality.npy (uint8 [n]),
                              KEY.json ({"task", "source", "id", ...}); plain POSIX tar
    train-000000.idx.npy      int64 [samples + 1]: byte offset of each sample's first member (last: end)
    tokenizers/{codec,image,video}/

The demo corpus (data/build_omni.py --config) is the one-shard-per-split case of the same format.

The ``webdataset`` package reads these files too (``wds.WebDataset(url).decode()``); omni reads them
itself because training needs what that package does not give: random access to one sample through
the index, so that resume is exact at any (shard, offset) without reading the shard from its start.

Streaming (:class:`ShardStream`). The shards of a split are cut into *pieces*: a whole shard when
there are at least as many shards as readers, else every ``m``-th sample of a shard. Reader ``s`` of
``S = world_size x max(1, num_workers)`` (rank-major) owns pieces ``s, s + S, ...`` -- each rank reads
its own shards, and its DataLoader workers split them again. A reader walks its pieces in a seeded
order per epoch, passes samples through a shuffle buffer (``buffer`` samples, seeded), and packs them
into rows of ``seq_len + 1`` positions exactly like the text corpora (omni/train/packing.py ``pack_row``):
consecutive rows overlap by one position, ``document_ids`` keep attention inside a conversation,
``positions`` restart per conversation and per row, span ids are renumbered to stay unique.

Exact resume. A reader's whole state is small: epoch, piece, sample offset, the buffer's RNG state,
and *references* (shard, sample) to what sits in the buffer and in the packer -- samples are re-read
through the index on resume. Each micro-batch carries its reader's state after producing it; the
trainer keeps the state of the last batch it consumed from each reader (not what workers prefetched),
and which reader comes next. N steps + resume + N steps gives the batches of 2N steps.
"""
from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from omni.conversation import OmniVocab

Tensor = torch.Tensor
FORMAT = "omni-shards-v1"
FIELDS = {"tokens": np.int32, "audio": np.int16, "span": np.int32, "loss": np.bool_, "modality": np.uint8}


def read_shard_index(path: str | Path) -> dict[str, Any]:
    """The corpus's index.json; raises FileNotFoundError / ValueError saying how to build one."""
    index_file = Path(path) / "index.json"
    if not index_file.is_file():
        raise FileNotFoundError(f"no shard corpus at {path} (missing index.json); build it with "
                                "`python data/build_omni.py --config CONFIG --source NAME=PATH --shards OUT`")
    index = json.loads(index_file.read_text())
    if index.get("format") != FORMAT:
        raise ValueError(f"{index_file}: format {index.get('format')!r}, expected {FORMAT!r}")
    return index


def parse_sample(chunk: bytes) -> dict[str, Any]:
    """One sample's tar members (the bytes between two index offsets) -> {"key", fields..., "json"}."""
    out: dict[str, Any] = {}
    with tarfile.open(fileobj=io.BytesIO(chunk), mode="r:") as tar:
        for member in tar:
            key, _, field = member.name.partition(".")
            data = tar.extractfile(member).read()
            out["key"] = key
            if field == "json":
                out["json"] = json.loads(data)
            else:
                out[field.removesuffix(".npy")] = np.load(io.BytesIO(data), allow_pickle=False)
    return out


class ShardReader:
    """Random access to the samples of a split's shards (``read(shard, sample)``); files open lazily
    per process, so the reader pickles into DataLoader workers."""

    def __init__(self, path: str | Path, split: str) -> None:
        self.path = Path(path)
        index = read_shard_index(path)
        if split not in index["splits"] or not index["splits"][split]:
            raise ValueError(f"{path} has no shards for split {split!r}; it has {sorted(index['splits'])}")
        self.shards = index["splits"][split]
        self.vocab = OmniVocab.from_dict(index["vocab"])
        self._offsets: dict[int, np.ndarray] = {}
        self._files: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_files": {}, "_offsets": {}}

    def samples(self, shard: int) -> int:
        return int(self.shards[shard]["samples"])

    def read(self, shard: int, sample: int) -> dict[str, Any]:
        if shard not in self._files:
            name = self.shards[shard]["file"]
            self._offsets[shard] = np.load(self.path / name.replace(".tar", ".idx.npy"), allow_pickle=False)
            self._files[shard] = open(self.path / name, "rb")
        off, f = self._offsets[shard], self._files[shard]
        f.seek(int(off[sample]))
        return parse_sample(f.read(int(off[sample + 1] - off[sample])))


class _Reader:
    """One reader's walk: pieces in a seeded order per epoch -> shuffle buffer -> packed rows."""

    def __init__(self, src: ShardReader, stream: int, streams: int, seq_len: int, buffer: int, seed: int,
                 state: Optional[dict[str, Any]]) -> None:
        self.src, self.seq_len, self.buffer_size, self.seed, self.stream = src, seq_len, buffer, seed, stream
        n = len(src.shards)
        self.split = math.ceil(streams / n)  # pieces per shard
        self.pieces = [p for p in range(n * self.split) if p % streams == stream]
        owned = sum(len(range(p % self.split, src.samples(p // self.split), self.split)) for p in self.pieces)
        if owned == 0:
            total = sum(src.samples(j) for j in range(n))
            raise ValueError(f"reader {stream} of {streams} (ranks x data.num_workers) gets no sample of the {total} in "
                             f"{n} shards: use fewer workers or processes, or build more shards")
        state = state or {"epoch": 0, "piece": 0, "sample": 0, "buffer": [], "packer": [], "packer_offset": 0,
                          "rng": np.random.default_rng([seed, stream]).bit_generator.state}
        self.epoch, self.piece, self.sample = state["epoch"], state["piece"], state["sample"]
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["rng"]
        self.buffer = [tuple(r) for r in state["buffer"]]
        self.packer = [(tuple(r), src.read(*r)) for r in state["packer"]]
        self.packer_offset = state["packer_offset"]

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "piece": self.piece, "sample": self.sample, "rng": self.rng.bit_generator.state,
                "buffer": [list(r) for r in self.buffer], "packer": [list(r) for r, _ in self.packer],
                "packer_offset": self.packer_offset}

    def _order(self) -> list[int]:
        perm = np.random.default_rng([self.seed, self.stream, self.epoch, 1]).permutation(len(self.pieces))
        return [self.pieces[i] for i in perm]

    def _next_ref(self) -> tuple[int, int]:
        """The next (shard, sample) this reader owns, moving through pieces and epochs."""
        while True:
            order = self._order()
            while self.piece < len(order):
                shard, part = divmod(order[self.piece], self.split)
                k = part + self.sample * self.split
                if k < self.src.samples(shard):
                    self.sample += 1
                    return shard, k
                self.piece, self.sample = self.piece + 1, 0
            self.epoch, self.piece, self.sample = self.epoch + 1, 0, 0

    def _next_sample(self) -> tuple[tuple[int, int], dict[str, Any]]:
        """The next sample out of the shuffle buffer (filling it first)."""
        while len(self.buffer) < self.buffer_size:
            self.buffer.append(self._next_ref())
        i = int(self.rng.integers(len(self.buffer)))
        ref, self.buffer[i] = self.buffer[i], self._next_ref()
        return ref, self.src.read(*ref)

    def row(self) -> dict[str, Tensor]:
        """The next packed row: tokens, audio, span, loss, modality, document_ids, positions [seq_len + 1]."""
        need = self.seq_len + 1
        while sum(len(s["tokens"]) for _, s in self.packer) - self.packer_offset < need:
            self.packer.append(self._next_sample())
        parts, docs, pos, spans, span_base, have = {f: [] for f in FIELDS}, [], [], [], 0, 0
        for d, (_, s) in enumerate(self.packer):
            start = self.packer_offset if d == 0 else 0
            take = min(len(s["tokens"]) - start, need - have)
            if take <= 0:
                break
            for f in FIELDS:
                parts[f].append(s[f][start : start + take])
            span = s["span"][start : start + take].astype(np.int64)
            spans.append(np.where(span > 0, span + span_base, 0))
            span_base += int(s["span"].max(initial=0))
            docs.append(np.full(take, d))
            pos.append(np.arange(take))
            have += take
        out = {f: torch.from_numpy(np.concatenate(parts[f]).astype(np.bool_ if f == "loss" else np.int64)) for f in FIELDS}
        out["span"] = torch.from_numpy(np.concatenate(spans))
        out["document_ids"] = torch.from_numpy(np.concatenate(docs))
        out["positions"] = torch.from_numpy(np.concatenate(pos))
        # Advance by seq_len: the row's last position starts the next row.
        self.packer_offset += self.seq_len
        while self.packer and self.packer_offset >= len(self.packer[0][1]["tokens"]):
            self.packer_offset -= len(self.packer[0][1]["tokens"])
            self.packer.pop(0)
        return out


class ShardStream(torch.utils.data.IterableDataset):
    """Micro-batches of packed rows streamed from a shard corpus (module docstring), resumable exactly.

    Args:
        path: corpus folder (index.json of format ``omni-shards-v1``).
        split: "train" or "val".
        seq_len: row length in positions (each row holds ``seq_len + 1``).
        batch_size: rows per micro-batch.
        rank, world_size: this process and the number of processes (each reads its own pieces).
        num_workers: DataLoader workers of this process (0: read in the main process).
        seed: seeds piece orders and shuffle buffers.
        buffer: shuffle-buffer size in samples (1 = no shuffling).

    Use :meth:`batches` (not a DataLoader of your own): it starts the workers and keeps, per reader,
    the state of the last batch handed out; :meth:`state_dict` / :meth:`load_state_dict` save and
    restore it (collective across ranks when torch.distributed is initialised).
    """

    def __init__(self, path: str | Path, split: str, seq_len: int, batch_size: int = 1, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, seed: int = 0, buffer: int = 1000) -> None:
        self.src = ShardReader(path, split)
        self.vocab = self.src.vocab
        self.path, self.split, self.seq_len = str(path), split, seq_len
        self.seed, self.buffer = seed, max(1, buffer)
        self.configure(rank, world_size, num_workers, batch_size)

    def configure(self, rank: int, world_size: int, num_workers: int, batch_size: int) -> None:
        """Set the process layout (the Trainer calls this; it resets the reading position)."""
        self.rank, self.world_size, self.num_workers, self.batch_size = rank, world_size, num_workers, batch_size
        self.readers = max(1, num_workers)
        self.states: list[Optional[dict[str, Any]]] = [None] * self.readers
        self.consumed = 0  # micro-batches handed out by this process

    def _stream_id(self, local: int) -> int:
        return self.rank * self.readers + local

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        local = (worker + self.consumed) % self.readers  # the reader this worker plays (rotated on resume)
        reader = _Reader(self.src, self._stream_id(local), self.world_size * self.readers, self.seq_len,
                         self.buffer, self.seed, self.states[local])
        while True:
            batch = torch.utils.data.default_collate([reader.row() for _ in range(self.batch_size)])
            batch["_reader"], batch["_state"] = local, reader.state()
            yield batch

    def batches(self, pin_memory: bool = False) -> Iterator[dict[str, Tensor]]:
        """Micro-batches forever, prefetched by ``num_workers`` workers; records each consumed one."""
        loader = torch.utils.data.DataLoader(self, batch_size=None, num_workers=self.num_workers, pin_memory=pin_memory,
                                             persistent_workers=False)
        for batch in loader:
            local, state = batch.pop("_reader"), batch.pop("_state")
            self.states[local] = state
            self.consumed += 1
            yield batch

    def advance(self, steps: int = 1) -> None:
        """The Trainer's per-step hook: nothing to do, each consumed micro-batch already recorded its state."""

    def state_dict(self) -> dict[str, Any]:
        """{"format", "world_size", "num_workers", "ranks": [per-rank {"consumed", "readers": [...]}]};
        gathers every rank's part when torch.distributed is initialised (call it on every rank)."""
        mine = {"consumed": self.consumed, "readers": self.states}
        ranks = [mine]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(ranks, mine)
        return {"format": FORMAT, "path": self.path, "seed": self.seed, "world_size": self.world_size,
                "num_workers": self.num_workers, "ranks": ranks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != FORMAT:
            raise ValueError("the checkpoint's sampler is not a shard stream's: resume on the corpus it was trained on")
        if (state["world_size"], max(1, state["num_workers"]), state["seed"]) != (self.world_size, self.readers, self.seed):
            raise ValueError(
                f"the checkpoint streamed with world_size={state['world_size']}, num_workers={state['num_workers']}, "
                f"seed={state['seed']}; this run has {self.world_size}, {self.num_workers}, {self.seed}. Each reader's "
                "position belongs to that layout: resume with the same processes, data.num_workers and train.seed")
        mine = state["ranks"][self.rank]
        self.consumed, self.states = int(mine["consumed"]), list(mine["readers"])
