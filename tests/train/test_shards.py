"""Tar shard corpora: streamed rows pack like the memory-mapped ones, readers (2 gloo ranks x 2 workers)
read disjoint samples, resume is exact across shard boundaries, and data/build_omni.py --source ...
--shards builds a resumable multi-task corpus that train.py trains on and resumes exactly."""
from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from omni.conversation import OmniVocab, Stream
from omni.data.shards import TarShardWriter
from omni.train.packing import pack_row
from omni.train.shards import FORMAT, ShardStream
from tests import corpus_fixtures as cf
from tests import omni_fixtures as F
from omni.config import load_config
from omni.data.build_omni import main
from tests.train.test_trainer import fit, losses

K = 2
ROW = 24  # seq_len


def sample(g: int) -> Stream:
    """Sample g: 5..40 positions; tokens g*1000 + position (so a row tells which samples it holds)."""
    n = 5 + (g * 7) % 36
    span = torch.tensor([(i // 4) + 1 if 1 <= i < 9 else 0 for i in range(n)])
    return Stream(torch.arange(n) + 1000 * g, torch.full((n, K), -1).index_fill(0, torch.arange(0, n, 3), g % 50),
                  span, torch.arange(n) % 2 == 0, torch.arange(n) % 4)


@pytest.fixture(scope="module")
def vocab(tmp_path_factory) -> OmniVocab:
    return F.vocab(F.text_tokenizer(tmp_path_factory.mktemp("tok")), F.codec(num_codebooks=K))


def synthetic_corpus(folder: Path, vocab: OmniVocab, sizes=(7, 5, 9)) -> list[int]:
    """Shards holding samples 0, 1, ... (``sizes`` per shard); returns the sample ids."""
    folder.mkdir(parents=True, exist_ok=True)
    shards, g = [], 0
    for j, n in enumerate(sizes):
        w = TarShardWriter(folder / f"train-{j:06d}.tar")
        for k in range(n):
            w.write(f"{k:07d}", sample(g), {"task": "test", "g": g})
            g += 1
        shards.append(w.close())
    (folder / "index.json").write_text(json.dumps({"format": FORMAT, "vocab": vocab.to_dict(), "splits": {"train": shards}}))
    return list(range(g))


def samples_in(batch: dict) -> set[int]:
    return set((batch["tokens"].flatten() // 1000).tolist())


def test_rows_pack_like_the_memory_mapped_corpus(tmp_path, vocab):
    ids = synthetic_corpus(tmp_path, vocab)
    ds = ShardStream(tmp_path, "train", ROW, batch_size=1, buffer=1)  # one reader, no shuffling
    rows = [b for _, b in zip(range(12), ds.batches())]
    # the same samples, in the order read, concatenated and packed by omni/train/packing.py
    order = []
    for b in rows:
        for g in (b["tokens"][0] // 1000).tolist():
            if not order or order[-1] != g:
                order.append(g)
    cat = Stream.cat([sample(g) for g in order])
    docs = np.cumsum([0] + [len(sample(g)) for g in order[:-1]])
    for r, b in enumerate(rows):
        sl = slice(r * ROW, r * ROW + ROW + 1)
        want = pack_row(cat.tokens[sl].numpy(), docs, r * ROW)
        for f in ("tokens", "document_ids", "positions"):
            assert torch.equal(b[f][0], want[f]), f
        for f in ("audio", "loss", "modality"):
            assert torch.equal(b[f][0], getattr(cat, f)[sl]), f
        span, ref = b["span"][0], cat.span[sl]  # renumbered per row, same groups
        assert torch.equal(span[:, None] == span[None] , ref[:, None] == ref[None])
    assert set(order) <= set(ids) and len(order) > 7  # read across shards (7 samples in the first)


def run_readers(path: Path, rank: int, world: int, workers: int, steps: int, state=None, buffer: int = 4):
    ds = ShardStream(path, "train", ROW, batch_size=2, rank=rank, world_size=world, num_workers=workers, seed=3, buffer=buffer)
    if state is not None:
        ds.load_state_dict(state)
    it = ds.batches()
    got = [next(it) for _ in range(steps)]
    return got, ds


def same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(all(torch.equal(x[f], y[f]) for f in x) for x, y in zip(a, b))


def test_exact_resume_across_shards_with_workers(tmp_path, vocab):
    synthetic_corpus(tmp_path, vocab)
    n = 7  # 2 workers: resuming after an odd number of batches makes worker 1's reader go first
    straight, _ = run_readers(tmp_path, 0, 1, 2, 2 * n)
    first, ds = run_readers(tmp_path, 0, 1, 2, n)
    state = json.loads(json.dumps(ds.state_dict()))  # what the checkpoint stores
    second, _ = run_readers(tmp_path, 0, 1, 2, n, state)
    assert same(first + second, straight)
    # reader 0 owns shards 0 and 2, reader 1 shard 1: 18+ of the 21 samples read means shards were crossed
    assert len(set().union(*map(samples_in, straight))) >= 18
    with pytest.raises(ValueError, match="num_workers"):
        ShardStream(tmp_path, "train", ROW, batch_size=2, num_workers=3, seed=3).load_state_dict(state)



def test_a_reader_without_samples_is_refused(tmp_path, vocab):
    synthetic_corpus(tmp_path, vocab, sizes=(2,))  # 2 samples, 4 readers
    ds = ShardStream(tmp_path, "train", ROW, batch_size=1, world_size=2, rank=1, num_workers=2)
    with pytest.raises(ValueError, match="gets no sample of the 2"):
        next(iter(ds))


def gloo_rank(path: Path, n: int, out: Path) -> None:
    """One torchrun rank (run as a script below): what its 2 workers read, and N + resume + N vs 2N."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    # one pass without shuffling, to check that the 4 readers split the corpus
    ds = ShardStream(path, "train", ROW, batch_size=1, rank=rank, world_size=2, num_workers=2, seed=3, buffer=1)
    seen: dict[int, set] = {0: set(), 1: set()}
    it = ds.batches()
    for i in range(40):
        seen[i % 2] |= samples_in(next(it))
    straight, _ = run_readers(path, rank, 2, 2, 2 * n)
    first, ds = run_readers(path, rank, 2, 2, n)
    state = ds.state_dict()  # collective: gathers both ranks' readers
    second, _ = run_readers(path, rank, 2, 2, n, state)
    (out / f"rank{rank}.json").write_text(json.dumps({"seen": {k: sorted(v) for k, v in seen.items()},
                                                      "exact": same(first + second, straight), "ranks_in_state": len(state["ranks"])}))
    dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.slow
def test_two_gloo_ranks_two_workers_disjoint_and_exact_resume(tmp_path, vocab):
    import subprocess
    import sys

    ids = synthetic_corpus(tmp_path / "c", vocab, sizes=(6, 5, 7, 4, 6))  # 5 shards, 4 readers
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__, str(tmp_path / "c"), "5", str(tmp_path)]
    root = Path(__file__).resolve().parents[2]  # the ranks import tests.* from the repository root
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=root,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    res = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    readers = [set(r["seen"][w]) for r in res for w in ("0", "1")]
    # (rank, worker) readers own disjoint shards: no sample is read by two of them
    for i in range(4):
        for j in range(i + 1, 4):
            assert not readers[i] & readers[j], (i, j)
    assert set().union(*readers) == set(ids)  # 40 rows of 24 positions per reader cover every shard
    assert all(r["exact"] and r["ranks_in_state"] == 2 for r in res)


@pytest.fixture(scope="module")
def shard_corpus(tmp_path_factory):
    """data/build_omni.py --source (speech, images, video) --shards, untrained tokenizers (tiny shapes)."""
    pytest.importorskip("espeakng_loader")
    root = tmp_path_factory.mktemp("shards")
    F.text_tokenizer(root / "text")
    sources = [f"librispeech={cf.librispeech(root / 'src')}", f"ljspeech={cf.ljspeech(root / 'src')}",
               f"commonvoice={cf.commonvoice(root / 'src')}", f"coco:val2017={cf.coco(root / 'src')}",
               f"images={cf.image_folder(root / 'src')}", f"videos={cf.video_folder(root / 'src')}"]
    argv = ["--config", "omni-tiny", "--untrained", *[a for s in sources for a in ("--source", s)],
            "--shards", str(root / "out"), "--shard-examples", "4", "--mix", "asr=1,tts=1,spoken_qa=1,caption=1,draw=1,video=1",
            f"tokenizer.path={root / 'text'}", "tokenizer.vocab_size=400", "video_tok.image_size=16", "image_tok.image_size=16"]
    torch.set_num_threads(1)
    main(argv)
    return root, argv


def test_build_from_sources(shard_corpus, capsys):
    root, argv = shard_corpus
    out = root / "out"
    index = json.loads((out / "index.json").read_text())
    assert index["format"] == FORMAT
    # 3 + 2 + 2 speech, 3 + 2 images, 2 videos; the planned corrupt files are skipped and counted
    assert sum(index["tasks"].values()) == 14
    assert set(index["tasks"]) <= {"asr", "tts", "spoken_qa", "caption", "draw", "video"} and "video" in index["tasks"]
    assert index["skipped"]["librispeech: undecodable audio"] == 1
    assert index["skipped"]["librispeech: transcript without audio"] == 1
    assert index["skipped"]["images: undecodable image"] == 1 and index["skipped"]["videos: undecodable video"] == 1
    assert index["skipped"]["coco:val2017: listed image missing"] == 1 and index["skipped"]["commonvoice: listed clip missing"] == 1
    shards = [s for split in index["splits"].values() for s in split]
    assert sum(s["samples"] for s in shards) == 14 and len(shards) == 5  # 15 planned: 4+4+4+2 train, 1 val
    # WebDataset conventions: KEY.FIELD members, one key per sample, in order
    with tarfile.open(out / shards[0]["file"]) as tar:
        names = tar.getnames()
    keys = list(dict.fromkeys(n.split(".")[0] for n in names))
    assert names[:6] == [f"{keys[0]}.{f}" for f in ("tokens.npy", "audio.npy", "span.npy", "loss.npy", "modality.npy", "json")]
    assert len(keys) == shards[0]["samples"]
    # resumable: finished shards are skipped; a deleted one is rebuilt identically
    first = (out / shards[1]["file"]).read_bytes()
    (out / shards[1]["file"]).unlink()
    capsys.readouterr()
    main(argv)
    assert "4 of 5 shards already finished" in capsys.readouterr().out
    assert (out / shards[1]["file"]).read_bytes() == first
    other = list(argv)
    other[other.index("--shard-examples") + 1] = "3"
    with pytest.raises(ValueError, match="different plan"):
        main(other)


def test_train_streams_shards_and_resumes_exactly(shard_corpus, tmp_path):
    root, _ = shard_corpus
    over = [f"data.path={root / 'out'}", f"tokenizer.path={root / 'text'}", "tokenizer.vocab_size=400", "data.seq_len=64",
            "data.shuffle_buffer=4", "model.dim=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=1",
            "model.ffn_dim=64", "model.max_seq_len=64", "omni.depth_dim=16", "omni.depth_layers=1", "omni.depth_ffn_dim=32",
            "omni.depth_heads=2", "train.steps=6", "train.batch_size=2", "train.warmup_steps=1", "train.log_every=1",
            "train.ckpt_every=3", "train.keep_checkpoints=0", "video_tok.image_size=16", "image_tok.image_size=16"]
    fit(load_config("omni-tiny", [*over, f"train.out_dir={tmp_path / 'a'}"]))
    fit(load_config("omni-tiny", [*over, f"train.out_dir={tmp_path / 'b'}"]), resume=str(tmp_path / "a" / "checkpoints" / "step_0000003"))
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert [a[s] for s in (4, 5, 6)] == [b[s] for s in (4, 5, 6)]
    assert json.loads((tmp_path / "a" / "checkpoints" / "step_0000003" / "trainer.json").read_text())["sampler"]["format"] == FORMAT



@pytest.mark.slow
def test_parallel_tokenizing_writes_the_same_shards(shard_corpus, tmp_path):
    root, argv = shard_corpus
    other = list(argv)
    other[other.index("--shards") + 1] = str(tmp_path / "par")
    main([*other, "--workers", "2"])  # two spawned processes share the shards
    for tar in sorted((root / "out").glob("*.tar")):
        assert (tmp_path / "par" / tar.name).read_bytes() == tar.read_bytes(), tar.name


if __name__ == "__main__":  # a torchrun rank of the gloo test
    import sys

    gloo_rank(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
