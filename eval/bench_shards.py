"""Shard streaming speed against training speed: can one core of data loading feed the trainer?

    python eval/bench_shards.py                      # 1 thread, ~1 min
    python eval/bench_shards.py --samples 20000 --seconds 20

Writes a corpus of ``--samples`` speech-sized conversations in the shard format (omni/train/shards.py;
the conversations are synthetic -- reading cost depends on their sizes, not on their values: each is
one ASR turn of U(2, 24) s of 12.5 Hz frames x 8 codebooks plus 10 + 2.5/s text positions, about
LibriSpeech's range), then measures in the same process, on one thread:

- **reading**: packed rows/s of :class:`ShardStream` (``num_workers=0``: the main process alone,
  shuffle buffer 1000), in positions per second, for omni-tiny's rows (8 x 512);
- **training** (the baseline): optimizer steps of configs/omni-tiny.yaml's model on those rows and
  of configs/tiny.yaml's text LM on its own row shape (16 x 128), in tokens per second.

Ratio = reading / training; the target is >= 20x against the faster trainer (one worker then keeps
20 GPUs' worth of tiny-model training fed, or 1 of a model 20x slower). Prints a table, writes JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from omni.config import load_config
from omni.conversation import MOD_AUDIO, MOD_TEXT, OmniVocab, Stream
from omni.data.shards import TarShardWriter
from omni.model.build import build_model
from omni.tokenizers.codec import SpeechCodec
from omni.tokenizers.image import ImageTokenizer
from omni.tokenizers.video import VideoTokenizer
from omni.train.shards import FORMAT, ShardStream
from omni.train.task import get_task
from omni.train.tasks.omni import OmniTask

SPECIALS = ("<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end_of_turn|>",
            "<|audio_start|>", "<|audio_end|>", "<|image_start|>", "<|image_end|>", "<|video_start|>",
            "<|video_end|>", "<|frame|>", "<|text_pad|>", "<|interrupt|>")


def conversation(rng: np.random.Generator, text_size: int, K: int, codes: int) -> Stream:
    """An ASR-shaped conversation: user [frames], assistant [transcript]; sizes as in the docstring."""
    seconds = rng.uniform(2, 24)
    frames, words = int(seconds * 12.5), int(10 + 2.5 * seconds)
    n = 4 + frames + 2 + words + 1
    tokens = rng.integers(32, text_size, n)
    audio = np.full((n, K), -1)
    audio[3 : 3 + frames] = rng.integers(0, codes, (frames, K))
    modality = np.full(n, MOD_TEXT)
    modality[3 : 3 + frames] = MOD_AUDIO
    loss = np.zeros(n, bool)
    loss[-words - 1 :] = True
    return Stream(*(torch.from_numpy(a) for a in (tokens, audio, np.zeros(n, np.int64), loss, modality)))


def write_corpus(folder: Path, vocab: OmniVocab, samples: int, per_shard: int) -> dict:
    rng = np.random.default_rng(0)
    shards = []
    for s in range(0, samples, per_shard):
        w = TarShardWriter(folder / f"train-{s // per_shard:06d}.tar")
        for k in range(min(per_shard, samples - s)):
            w.write(f"{k:07d}", conversation(rng, vocab.text_size, vocab.audio_codebooks, vocab.audio_codes), {"task": "asr"})
        shards.append(w.close())
    (folder / "index.json").write_text(json.dumps({"format": FORMAT, "vocab": vocab.to_dict(), "splits": {"train": shards}}))
    return {"samples": samples, "shards": len(shards), "bytes": sum(s["bytes"] for s in shards),
            "positions": sum(s["positions"] for s in shards)}


def rate(step: Callable[[], int], seconds: float, warmup: int = 2) -> float:
    """Units per second of ``step`` (which returns the units it processed) over ``seconds`` after warm-up."""
    for _ in range(warmup):
        step()
    done, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        done += step()
    return done / (time.perf_counter() - t)


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=4000)
    p.add_argument("--per-shard", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=10.0, help="timing window of each measurement")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="reports/bench_shards.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = load_config("omni-tiny", [])
    text_size = cfg.tokenizer.vocab_size
    metas = (SpeechCodec(cfg.section("codec")).metadata, ImageTokenizer(cfg.section("image_tok")).metadata,
             VideoTokenizer(cfg.section("video_tok")).metadata)
    vocab = OmniVocab(text_size, int(metas[1]["codebook_size"]), tuple(metas[1]["grid"]), int(metas[2]["codebook_size"]),
                      tuple(metas[2]["grid"]), int(metas[0]["num_codebooks"]), int(metas[0]["codebook_size"]),
                      {n: i for i, n in enumerate(SPECIALS)})
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": platform.processor() or platform.machine(),
                     "torch": torch.__version__, "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        results["corpus"] = write_corpus(folder, vocab, args.samples, args.per_shard)
        results["corpus"]["write_s"] = time.perf_counter() - t
        B, S = cfg.train.batch_size, cfg.data.seq_len

        stream = ShardStream(folder, "train", S, B, num_workers=0, seed=0, buffer=1000)
        batches = stream.batches()
        results["read_positions_per_s"] = rate(lambda: next(batches)["tokens"].shape[0] * S, args.seconds)

        cfg.data.path = str(folder)
        task = OmniTask()
        model = task.build_model(cfg).train()
        task.build_dataset(cfg)  # sets the task's loss settings from the corpus
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        rows = ShardStream(folder, "train", S, B, seed=1).batches()

        def omni_step() -> int:
            batch = next(rows)
            loss, _ = task.loss(model, batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return task.tokens_in(batch)

        results["train_omni_tiny_tokens_per_s"] = rate(omni_step, args.seconds)

        tiny = load_config("tiny", [])
        lm = get_task("lm")
        lm_model = build_model(tiny).train()
        lm_opt = torch.optim.AdamW(lm_model.parameters(), lr=1e-4)
        tb, ts = tiny.train.batch_size, tiny.data.seq_len

        def lm_step() -> int:
            batch = {"tokens": torch.randint(0, tiny.model.vocab_size, (tb, ts + 1)),
                     "document_ids": torch.zeros(tb, ts + 1, dtype=torch.long), "positions": torch.arange(ts + 1).repeat(tb, 1)}
            loss, _ = lm.loss(lm_model, batch)
            loss.backward()
            lm_opt.step()
            lm_opt.zero_grad(set_to_none=True)
            return tb * ts

        results["train_tiny_lm_tokens_per_s"] = rate(lm_step, args.seconds)
    read = results["read_positions_per_s"]
    results["ratio_vs_omni_tiny"] = read / results["train_omni_tiny_tokens_per_s"]
    results["ratio_vs_tiny_lm"] = read / results["train_tiny_lm_tokens_per_s"]
    results["ratio"] = min(results["ratio_vs_omni_tiny"], results["ratio_vs_tiny_lm"])
    c = results["corpus"]
    print(f"{results['device']} | torch {results['torch']} | {args.threads} thread(s) | corpus: {c['samples']} conversations, "
          f"{c['positions']:,} positions, {c['bytes'] / 1e6:.1f} MB in {c['shards']} shards ({c['bytes'] / c['samples'] / 1e3:.1f} kB each)")
    print(f"{'what':58s} {'tokens/s':>12s} {'ratio':>8s}")
    print(f"{'shard reading (ShardStream, main process, 8 x 512 rows)':58s} {read:12,.0f}")
    for key, name in (("omni_tiny", "training configs/omni-tiny.yaml (8 x 512)"), ("tiny_lm", "training configs/tiny.yaml LM (16 x 128)")):
        print(f"{name:58s} {results[f'train_{key}_tokens_per_s']:12,.0f} {results[f'ratio_vs_{key}']:7.1f}x")
    print(f"reading / the faster trainer: {results['ratio']:.1f}x (target >= 20x)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
