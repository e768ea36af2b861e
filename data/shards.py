"""Build a multi-task shard corpus from standard corpus layouts: plan, tokenize once, write tar shards.

    python data/build_omni.py --config configs/omni-tiny.yaml \\
        --source librispeech=/data/LibriSpeech --source coco=/data/coco --shards out/ [--workers 4]

1. **Plan** (cheap, no decoding): every source lists its examples (data/sources/); each example becomes
   one conversation of a task drawn with the mix's weights among its modality's tasks
   (:data:`TASKS`; data/omni-mix.yaml); the plan is shuffled with the seed, every ``VAL_EVERY``-th
   conversation goes to ``val``, and each split is cut into shards of ``shard_examples`` conversations.
2. **Tokenize** each shard: media decoded (bad files skipped and counted), speech encoded by the codec
   in batches of similar length, images and video frames in batches, on the GPU when there is one
   (process ``p`` of ``--workers`` uses ``cuda:p % n``), with a progress bar over shards.
3. **Write** the shard (omni/train/shards.py gives the format) to a temporary name, then its index and
   stats, then rename: a shard whose ``.tar`` exists is finished, and a rerun skips it (resumable).
   ``index.json`` is written last, from every shard's stats; the skip report is printed at the end.

Tasks (one conversation per planned example):

* speech (LibriSpeech, LibriTTS, VCTK, LJSpeech, Common Voice): ``asr`` ("Transcribe this." + speech
  -> transcript), ``tts`` ("Say: ..." -> the speech, monologue = transcript), ``spoken_qa`` (speech +
  a question answerable from its transcript -> the answer: its first word, last word or word count);
* images (COCO, image-text folders): ``caption`` (image + "Describe the image." -> one of its
  captions) and ``draw`` ("Draw ..." + caption -> the image's codes);
* videos: ``video`` (clip + "What happens in the video?" -> its caption).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import tarfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import yaml
from tqdm import tqdm

from omni.config import Config
from omni.conversation import Audio, ConversationFormat, Image, Message, OmniVocab, Stream, Text, Video
from omni.data.sources import AUDIO, IMAGE, VIDEO, Example, MediaSpec, Source, decode, open_source
from omni.tokenizers.base import Tokenizer, load_tokenizer
from omni.tokenizers.text import SentencePieceTokenizer, build_text_tokenizer
from omni.train.shards import FIELDS, FORMAT

TASKS = {AUDIO: ("asr", "tts", "spoken_qa"), IMAGE: ("caption", "draw"), VIDEO: ("video",)}
DEFAULT_MIX = Path(__file__).resolve().parent / "omni-mix.yaml"
VAL_EVERY = 40
SPOKEN_QUESTIONS = ("What was the first word?", "What was the last word?", "How many words were spoken?")
PROMPTS = ["Transcribe this.", "Describe the image.", "What happens in the video?", "Say:", "Draw", *SPOKEN_QUESTIONS]
NUMBERS = "zero one two three four five six seven eight nine ten eleven twelve".split()


@dataclass
class Item:
    """One planned conversation: which source example, which task, and a seed for its random choices."""

    source: str
    example: Example
    task: str
    seed: int


def read_mix(spec: Optional[str]) -> dict[str, float]:
    """Task weights from a YAML file (default data/omni-mix.yaml) or inline ``asr=1,tts=0.5``; tasks
    left out weigh 0. Raises ValueError for unknown tasks or negative weights."""
    if spec and "=" in spec:
        mix = {k.strip(): float(v) for k, v in (kv.split("=", 1) for kv in spec.split(","))}
    else:
        mix = yaml.safe_load(Path(spec or DEFAULT_MIX).read_text()) or {}
    known = {t for ts in TASKS.values() for t in ts}
    bad = [k for k, v in mix.items() if k not in known or float(v) < 0]
    if bad:
        raise ValueError(f"task mix: unknown task or negative weight {bad}; tasks are {sorted(known)}")
    return {k: float(v) for k, v in mix.items()}


def plan(sources: list[tuple[str, Source]], mix: dict[str, float], seed: int) -> dict[str, list[Item]]:
    """{"train": [...], "val": [...]} conversations of every source example (module docstring, step 1)."""
    rng = random.Random(seed)
    items = []
    for label, src in sources:
        tasks = [t for t in TASKS[src.modality] if mix.get(t, 0) > 0]
        if not tasks:
            print(f"{label}: the mix gives no weight to its tasks {TASKS[src.modality]}; skipped")
            continue
        weights = [mix[t] for t in tasks]
        for ex in tqdm(src.examples(), desc=f"listing {label}", disable=None):
            items.append(Item(label, ex, rng.choices(tasks, weights)[0], rng.randrange(1 << 31)))
    rng.shuffle(items)
    return {"train": [it for i, it in enumerate(items) if i % VAL_EVERY != VAL_EVERY - 1],
            "val": [it for i, it in enumerate(items) if i % VAL_EVERY == VAL_EVERY - 1]}


# ---- conversations ---------------------------------------------------------------------------------
def spoken_answer(question: str, text: str) -> str:
    words = [w.strip(".,;:!?\"'()") for w in text.split()]
    words = [w for w in words if w] or [text]
    if question == SPOKEN_QUESTIONS[0]:
        return f'The first word was "{words[0]}".'
    if question == SPOKEN_QUESTIONS[1]:
        return f'The last word was "{words[-1]}".'
    n = len(words)
    return f"{NUMBERS[n].capitalize() if n < len(NUMBERS) else n} words were spoken."


def conversation(item: Item, codes: torch.Tensor) -> list[Message]:
    """The messages of ``item`` given its media's codes (speech [K, frames], image [h, w], video [T', h, w])."""
    rng, text = random.Random(item.seed), item.example.text
    if item.task == "asr":
        return [Message("user", [Text("Transcribe this."), Audio(codes)]), Message("assistant", text)]
    if item.task == "tts":
        return [Message("user", f"Say: {text}"), Message("assistant", Audio(codes, text=text))]
    if item.task == "spoken_qa":
        q = rng.choice(SPOKEN_QUESTIONS)
        return [Message("user", [Audio(codes), Text(q)]), Message("assistant", spoken_answer(q, text))]
    caption = rng.choice(item.example.meta.get("captions") or [text])
    if item.task == "caption":
        return [Message("user", [Image(codes), Text("Describe the image.")]), Message("assistant", caption)]
    if item.task == "draw":
        return [Message("user", f"Draw {caption[:1].lower() + caption[1:]}"), Message("assistant", Image(codes))]
    if item.task == "video":
        return [Message("user", [Video(codes), Text("What happens in the video?")]), Message("assistant", caption)]
    raise ValueError(f"unknown task {item.task!r}")


# ---- writing ---------------------------------------------------------------------------------------
class TarShardWriter:
    """Writes one shard: samples as WebDataset-style tar members, then ``.idx.npy`` offsets; the
    ``.tar`` appears (renamed from ``.tar.tmp``) only when :meth:`close` finishes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.tar = tarfile.open(self.tmp, "w", format=tarfile.USTAR_FORMAT)
        self.offsets: list[int] = []
        self.positions = 0

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o644
        self.tar.addfile(info, io.BytesIO(data))

    def write(self, key: str, stream: Stream, meta: dict[str, Any]) -> None:
        """Add one conversation (``key``: unique within the shard, no dots)."""
        self.offsets.append(self.tar.offset)
        for field, dtype in FIELDS.items():
            buf = io.BytesIO()
            np.save(buf, getattr(stream, field).numpy().astype(dtype), allow_pickle=False)
            self._add(f"{key}.{field}.npy", buf.getvalue())
        self._add(f"{key}.json", json.dumps(meta).encode())
        self.positions += len(stream)

    def close(self) -> dict[str, Any]:
        """Finish the shard; returns {"file", "samples", "positions", "bytes"}."""
        end = self.tar.offset
        self.tar.close()
        np.save(self.path.with_suffix(".idx.npy"), np.array([*self.offsets, end], dtype=np.int64), allow_pickle=False)
        os.replace(self.tmp, self.path)
        return {"file": self.path.name, "samples": len(self.offsets), "positions": self.positions, "bytes": self.path.stat().st_size}


# ---- tokenizing ------------------------------------------------------------------------------------
class ShardEncoder:
    """Decodes, encodes and writes shards in one process (tokenizers loaded once, on ``device``)."""

    def __init__(self, cfg: Config, out: Path, device: str, batch: int = 16) -> None:
        self.out, self.device, self.batch = out, torch.device(device), batch
        self.toks: dict[str, Tokenizer] = {n: load_tokenizer(out / "tokenizers" / n) for n in ("codec", "image", "video")}
        for tok in self.toks.values():
            tok.to(self.device).eval()
        text = build_text_tokenizer(cfg.tokenizer)
        self.vocab = OmniVocab.build(text, *(self.toks[n].metadata for n in ("codec", "image", "video")))
        self.fmt = ConversationFormat(text, self.vocab)
        video = self.toks["video"].metadata
        self.spec = MediaSpec(sample_rate=int(self.toks["codec"].metadata["sample_rate"]),
                              image_size=int(self.toks["image"].metadata["image_size"]), fps=float(video["fps"]))
        self.video_size, self.stride = int(video["image_size"]), int(video["frames_per_token_step"])

    @torch.no_grad()
    def _encode(self, items: list[Item], skipped: Counter) -> list[Optional[torch.Tensor]]:
        """Codes of each item's media (None where the file is bad), batched per modality."""
        media: list[Optional[torch.Tensor]] = []
        for it in items:
            spec = self.spec if it.example.modality != VIDEO else MediaSpec(image_size=self.video_size, fps=self.spec.fps)
            try:
                m = decode(it.example, spec)
                if it.example.modality == VIDEO:  # the tokenizer takes 1 + r*n frames
                    m = m[: 1 + self.stride * ((m.shape[0] - 1) // self.stride)]
                media.append(m)
            except (ValueError, OSError, RuntimeError):
                skipped[f"{it.source}: undecodable {it.example.modality}"] += 1
                media.append(None)
        codes: list[Optional[torch.Tensor]] = [None] * len(items)
        hop = int(self.toks["codec"].metadata["hop_length"])
        groups: dict[Any, list[int]] = {}
        for i, m in enumerate(media):
            if m is not None:  # audio: similar lengths share a batch; images: any; video: same frame count
                mod = items[i].example.modality
                groups.setdefault((mod, m.shape[0] if mod == VIDEO else 0), []).append(i)
        for (mod, _), idx in groups.items():
            if mod == AUDIO:
                idx = sorted(idx, key=lambda i: media[i].shape[-1])
            for b in range(0, len(idx), self.batch):
                part = idx[b : b + self.batch]
                if mod == AUDIO:
                    frames = [-(-media[i].shape[-1] // hop) for i in part]
                    wav = torch.zeros(len(part), 1, max(frames) * hop)
                    for j, i in enumerate(part):  # the codec is causal: zero padding after a clip leaves its frames as they are
                        wav[j, 0, : media[i].shape[-1]] = media[i][0]
                    out = self.toks["codec"].encode(wav.to(self.device)).cpu()
                    for j, i in enumerate(part):
                        codes[i] = out[j, :, : frames[j]]
                else:
                    out = self.toks["image" if mod == IMAGE else "video"].encode(torch.stack([media[i] for i in part]).to(self.device)).cpu()
                    for j, i in enumerate(part):
                        codes[i] = out[j]
        return codes

    def write_shard(self, name: str, items: list[Item], chunk: int = 256) -> dict[str, Any]:
        """Encode ``items`` into ``out/name``; returns the shard's stats (also saved as ``name.json``)."""
        writer = TarShardWriter(self.out / name)
        skipped: Counter = Counter()
        tasks: Counter = Counter()
        for c in range(0, len(items), chunk):
            part = items[c : c + chunk]
            for k, (item, codes) in enumerate(zip(part, self._encode(part, skipped))):
                if codes is None:
                    continue
                stream = self.fmt.serialise(conversation(item, codes))
                meta = {"task": item.task, "source": item.source, "text": item.example.text, **item.example.meta}
                writer.write(f"{c + k:07d}", stream, meta)
                tasks[item.task] += 1
        stats = {**writer.close(), "tasks": dict(tasks), "skipped": dict(skipped)}
        (self.out / name).with_suffix(".json").write_text(json.dumps(stats))
        return stats


_ENCODER: Optional[ShardEncoder] = None


def _init_worker(cfg: Config, out: Path, counter: Any) -> None:
    global _ENCODER
    torch.set_num_threads(1)
    with counter.get_lock():
        p, counter.value = counter.value, counter.value + 1
    device = f"cuda:{p % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
    _ENCODER = ShardEncoder(cfg, out, device)


def _run_shard(name: str, items: list[Item]) -> dict[str, Any]:
    return _ENCODER.write_shard(name, items)


def plan_digest(plans: dict[str, list[Item]], shard_examples: int) -> str:
    h = hashlib.sha256(str(shard_examples).encode())
    for split in sorted(plans):
        for it in plans[split]:
            h.update(json.dumps([split, it.source, it.example.path, it.task, it.seed]).encode())
    return h.hexdigest()


def build_shards(cfg: Config, sources: list[str], out: str | Path, toks: dict[str, Tokenizer], tokenizer_sources: dict[str, str],
                 mix: Optional[str] = None, shard_examples: int = 100_000, workers: int = 1) -> dict[str, Any]:
    """Build the shard corpus of ``sources`` (``NAME[:SPLIT]=PATH`` each) into ``out`` (module docstring).

    ``toks``: the frozen codec/image/video tokenizers, already saved under ``out/tokenizers``
    (build_omni.frozen_tokenizers). A sentencepiece text tokenizer the config names but that does not
    exist yet is trained on the planned texts. Returns the index (also written to ``out/index.json``).
    Raises ValueError when ``out`` holds shards of a different plan (other sources, mix, seed or size).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    opened = [(spec.split("=", 1)[0], open_source(spec)) for spec in sources]
    plans = plan(opened, read_mix(mix), cfg.train.seed)
    digest = plan_digest(plans, shard_examples)
    plan_file = out / "plan.json"
    if plan_file.is_file() and json.loads(plan_file.read_text())["digest"] != digest:
        raise ValueError(f"{out} holds shards of a different plan (sources, mix, train.seed or shard size changed); "
                         "write to an empty folder or delete it")
    plan_file.write_text(json.dumps({"digest": digest, "sources": sources, "shard_examples": shard_examples}))
    tcfg = cfg.tokenizer
    sp_folder = Path(tcfg.path).parent if tcfg.path.endswith(".model") else Path(tcfg.path)
    if tcfg.kind == "sentencepiece" and not (sp_folder / SentencePieceTokenizer.MODEL_FILE).exists():
        texts = [it.example.text for its in plans.values() for it in its][:200_000] + PROMPTS
        print(f"training a {tcfg.vocab_size}-piece sentencepiece tokenizer on the sources' text -> {tcfg.path}")
        SentencePieceTokenizer.train(texts, tcfg.vocab_size, sp_folder)
    jobs = [(f"{split}-{s // shard_examples:06d}.tar", its[s : s + shard_examples])
            for split, its in plans.items() for s in range(0, len(its), shard_examples)]
    todo = [(name, its) for name, its in jobs if not (out / name).is_file()]
    if len(todo) < len(jobs):
        print(f"{len(jobs) - len(todo)} of {len(jobs)} shards already finished in {out}: skipped")
    bar = tqdm(total=len(todo), desc="tokenizing shards", disable=None)
    if workers <= 1:
        encoder = ShardEncoder(cfg, out, "cuda" if torch.cuda.is_available() else "cpu")
        for name, its in todo:
            encoder.write_shard(name, its)
            bar.update(1)
    else:
        ctx = get_context("spawn")  # CUDA and threaded torch do not survive fork
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(cfg, out, ctx.Value("i", 0))) as pool:
            for f in as_completed([pool.submit(_run_shard, name, its) for name, its in todo]):
                f.result()
                bar.update(1)
    bar.close()
    stats = {name: json.loads((out / name).with_suffix(".json").read_text()) for name, _ in jobs}
    skipped: Counter = Counter()
    for label, src in opened:  # layout problems met while listing, then decoding failures per shard
        skipped.update({f"{label}: {reason}": n for reason, n in src.skipped.items()})
    tasks: Counter = Counter()
    for s in stats.values():
        skipped.update(s["skipped"])
        tasks.update(s["tasks"])
    text = build_text_tokenizer(tcfg)
    index = {
        "format": FORMAT,
        "vocab": OmniVocab.build(text, *(toks[n].metadata for n in ("codec", "image", "video"))).to_dict(),
        "tokenizers": {name: str(out / "tokenizers" / name) for name in toks},
        "tokenizer_sources": tokenizer_sources,
        "sources": sources,
        "splits": {split: [{k: stats[name][k] for k in ("file", "samples", "positions", "bytes")}
                           for name, _ in jobs if name.startswith(f"{split}-")] for split in plans},
        "tasks": dict(tasks),
        "skipped": dict(skipped),
    }
    index["splits"] = {k: v for k, v in index["splits"].items() if v}
    (out / "index.json").write_text(json.dumps(index, indent=1))
    total = sum(s["positions"] for s in stats.values())
    print(f"shard corpus: {sum(tasks.values())} conversations {dict(tasks)}, {total:,} positions, "
          f"{len(jobs)} shards -> {out}")
    for label, src in opened:  # listing problems, with examples
        if src.report():
            print(src.report())
    if skipped:
        print("skipped in all: " + "; ".join(f"{k}: {v}" for k, v in sorted(skipped.items())))
    return index
