"""Token shards and packed rows.

A corpus folder (written by :class:`ShardWriter`, read by :class:`PackedDataset`)::

    index.json                 {"format": "omni-packed-v1", "dtype": "uint16", "vocab_size": V,
                                "splits": {"train": [{"tokens": "train_0000.bin", "doc_starts":
                                "train_0000.docs.npy", "num_tokens": n, "num_docs": d}, ...], "val": [...]}}
    train_0000.bin             the shard's documents concatenated, raw uint16/uint32 (memory-mapped)
    train_0000.docs.npy        int64 start offset of every document in the shard

Packing: a shard's token stream is cut into rows of ``seq_len + 1`` tokens (row r starts at
``r·seq_len``; the extra token is the last target). Documents are not padded: a row may hold the end of
one document and the start of the next. Each row carries ``document_ids`` (0, 1, ... per document in the
row) so attention never crosses documents (``AttentionMask(document_ids=...)``), and ``positions`` that
restart at 0 where a document starts (and at the row start), for RoPE.
"""
from __future__ import annotations

import json
from bisect import bisect_right
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch

FORMAT = "omni-packed-v1"


def pack_row(tokens: np.ndarray, doc_starts: np.ndarray, start: int) -> dict[str, torch.Tensor]:
    """One packed row from a shard.

    Args:
        tokens: the row's tokens [seq_len + 1], taken from the shard at offset ``start``.
        doc_starts: sorted start offsets of the shard's documents [num_docs] (first is 0).
        start: offset of the row in the shard.
    Returns:
        tokens, document_ids, positions: LongTensors [seq_len + 1].
    """
    idx = np.arange(start, start + len(tokens))
    doc = np.searchsorted(doc_starts, idx, side="right") - 1
    positions = idx - np.maximum(doc_starts[doc], start)
    return {
        "tokens": torch.from_numpy(tokens.astype(np.int64)),
        "document_ids": torch.from_numpy(doc - doc[0]),
        "positions": torch.from_numpy(positions),
    }


class PackedDataset(torch.utils.data.Dataset):
    """Map-style dataset of packed rows over memory-mapped shards (see module docstring)."""

    def __init__(self, path: str | Path, split: str, seq_len: int) -> None:
        self.path, self.seq_len = Path(path), seq_len
        index_file = self.path / "index.json"
        if not index_file.is_file():
            raise FileNotFoundError(f"no corpus at {self.path} (missing index.json); build it with "
                                    f"`python data/build_text.py --config CONFIG` or point data.path at one")
        index = json.loads(index_file.read_text())
        if index.get("format") != FORMAT:
            raise ValueError(f"{index_file}: format {index.get('format')!r}, expected {FORMAT!r}; rebuild the corpus")
        if split not in index["splits"]:
            raise ValueError(f"{self.path} has no split {split!r}; it has {sorted(index['splits'])}")
        self.vocab_size = int(index["vocab_size"])
        self.dtype = np.dtype(index["dtype"])
        self.shards = [s for s in index["splits"][split] if (s["num_tokens"] - 1) // seq_len > 0]
        if not self.shards:
            raise ValueError(f"split {split!r} of {self.path} is shorter than one row of {seq_len + 1} tokens")
        self._tokens: list[Optional[np.memmap]] = [None] * len(self.shards)
        self._docs: list[Optional[np.ndarray]] = [None] * len(self.shards)
        self._ends = np.cumsum([(s["num_tokens"] - 1) // seq_len for s in self.shards]).tolist()

    def __len__(self) -> int:
        return self._ends[-1]

    def _shard(self, i: int) -> tuple[np.memmap, np.ndarray]:
        # Opened lazily so the dataset pickles cheaply into DataLoader workers.
        if self._tokens[i] is None:
            s = self.shards[i]
            self._tokens[i] = np.memmap(self.path / s["tokens"], dtype=self.dtype, mode="r")
            self._docs[i] = np.load(self.path / s["doc_starts"], allow_pickle=False)
        return self._tokens[i], self._docs[i]

    def __getitem__(self, row: int) -> dict[str, torch.Tensor]:
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} out of range [0, {len(self)})")
        shard = bisect_right(self._ends, row)
        local = row - (self._ends[shard - 1] if shard else 0)
        tokens, docs = self._shard(shard)
        start = local * self.seq_len
        return pack_row(np.asarray(tokens[start : start + self.seq_len + 1]), docs, start)


class ShardWriter:
    """Append tokenised documents per split; writes shards of about ``shard_tokens`` tokens and index.json."""

    def __init__(self, path: str | Path, vocab_size: int, shard_tokens: int = 50_000_000) -> None:
        self.path, self.vocab_size, self.shard_tokens = Path(path), vocab_size, shard_tokens
        self.dtype = np.uint16 if vocab_size <= 2**16 else np.uint32
        self.path.mkdir(parents=True, exist_ok=True)
        self.splits: dict[str, list[dict]] = {}
        self._pending: dict[str, list[np.ndarray]] = {}

    def add(self, split: str, ids: Iterable[int]) -> None:
        arr = np.asarray(list(ids), dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size})")
        pending = self._pending.setdefault(split, [])
        pending.append(arr)
        if sum(len(a) for a in pending) >= self.shard_tokens:
            self._flush(split)

    def _flush(self, split: str) -> None:
        docs = self._pending.pop(split, [])
        if not docs:
            return
        shards = self.splits.setdefault(split, [])
        name = f"{split}_{len(shards):04d}"
        np.concatenate(docs).astype(self.dtype).tofile(self.path / f"{name}.bin")
        starts = np.cumsum([0] + [len(d) for d in docs[:-1]]).astype(np.int64)
        np.save(self.path / f"{name}.docs.npy", starts, allow_pickle=False)
        shards.append({"tokens": f"{name}.bin", "doc_starts": f"{name}.docs.npy",
                       "num_tokens": int(sum(len(d) for d in docs)), "num_docs": len(docs)})

    def close(self, **extra) -> dict:
        """Flush everything and write index.json (last, so a half-built corpus has no index)."""
        for split in list(self._pending):
            self._flush(split)
        index = {"format": FORMAT, "dtype": np.dtype(self.dtype).name, "vocab_size": self.vocab_size,
                 "splits": self.splits, **extra}
        (self.path / "index.json").write_text(json.dumps(index, indent=1))
        return index
