"""``make demo`` (``python -m omni.demo``): the text foundation, then the omni model, end to end on a
CPU in minutes.

This pipeline builds corpora (data/) and trains every tokenizer, so it lives outside the library:
omni/demo.py only runs this module by name (omni never imports data/ or eval/).

Text (configs/tiny.yaml):

1. build the demo corpus and its sentencepiece tokenizer if missing (data/build_text.py);
2. train configs/tiny.yaml from scratch with the one Trainer (fresh run folder ``runs/demo``);
3. reload the checkpoint it wrote and print generated text and where the checkpoint lives.

Omni (configs/omni-tiny.yaml, see docs/omni.md):

4. check the shipped omni-tiny (omni/assets/omni-tiny: the sha256 of its weights, MODEL_CARD.md:
   trained by this repository's configs for longer than a demo can) and copy it into ``runs/demo-omni``.
   With ``--train`` steps 4a-4c run here instead (``--from-scratch``: the codec too):
   a. check the shipped speech codec (omni/assets/codec-tiny; with ``--from-scratch`` it is fitted and
      trained from configs/codec-tiny.yaml, ~10 min) and train the image and video tokenizers with the
      one Trainer (configs/{image,video}-tiny.yaml, ~1.5 / 1 min) into ``runs/demo-{image,video}``,
      reusing finished runs;
   b. build the multi-task demo corpus from them (data/build_omni.py: text, ASR, TTS, every question of
      data/spoken_qa.jsonl spoken in many training voices and answered in the one assistant voice,
      captions of random crops, text -> image, video description);
   c. train the omni model from scratch (tokenizers frozen) into ``runs/demo-omni`` for as many steps
      as fit ~7 min (the shipped model had 4000);
5. check its answers (eval/demo_answers.py): captions of unseen crops of every picture, a drawing of
   every picture, then every spoken question in unseen voices streamed through batched
   SpeechSessions (80 ms frames in, VAD ends each turn, frames out as they are decoded), each reply
   transcribed by Whisper and scored; ``runs/demo-omni/answers/`` holds answers.json, the question
   and reply wavs and drawings.png.

    python -m omni.demo [--only text|omni] [--train] [--from-scratch] [--steps N] [--omni-steps N] [--budget-scale X] [--judge base|tiny.en] [--out runs/demo] [key=value ...]

Each training stage gets as many steps as fit its time budget (:func:`budget_steps` times a few steps
first). Each stage prints what it does and how long it took; the demo ends with the time of every stage.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import NamedTuple, Optional

import torch

import omni.tokenizers  # noqa: F401  (registers the tokenizer config sections)
from omni.config import Config, load_config
from omni.data.build_images import build_image_corpus
from omni.data.build_omni import build_omni_corpus, tokenizer_folder
from omni.data.build_speech import build_speech_corpus
from omni.data.build_text import build_text_corpus
from omni.data.build_video import build_video_corpus
from omni.eval.demo_answers import evaluate
from omni.eval.intelligibility import Judge
from omni.infer.chat import OmniChat
from omni.infer.load import SHIPPED_OMNI, shipped_omni
from omni.tokenizers.codec import SHIPPED_CODEC, shipped_codec
from omni.train.checkpoint import (LATEST, STEP_PREFIX, CheckpointError, config_mismatch, load_config_file,
                                   load_model_state, read_trainer_state, resolve_checkpoint)
from omni.train.shards import ShardStream, read_shard_index
from omni.train.task import get_task
from omni.train.trainer import Trainer, read_metrics

CONFIG = "configs/omni-tiny.yaml"
# The demo corpus is built from the tokenizers trained first, so it gets its own folder.
DEMO_OVERRIDES = ["train.batch_size=4", "train.warmup_steps=20", "train.log_every=20", "train.ckpt_every=1000",
                  "data.path=.cache/data/demo-omni"]
DEMO_STEPS = 350  # at most; fewer when this machine is slower than TRAIN_BUDGET_S allows
TRAIN_BUDGET_S = 420.0


class TokenizerStage(NamedTuple):
    config: str  # trained with the one Trainer; steps are the config's at most
    section: str  # its config section
    key: str  # the omni config key that names it
    metric: str  # logged metric printed first -> last
    budget_s: float  # training time budget on this machine (steps sized like the omni model's)


# Tokenizers trained (into runs/demo-NAME) before the omni corpus is built from them.
TOKENIZERS = {
    "codec": TokenizerStage("configs/codec-tiny.yaml", "codec", "omni.codec", "mel_l1", 180.0),
    "image": TokenizerStage("configs/image-tiny.yaml", "image_tok", "omni.image_tokenizer", "psnr", 90.0),
    "video": TokenizerStage("configs/video-tiny.yaml", "video_tok", "omni.video_tokenizer", "psnr", 60.0),
}
SPEECH_MINUTES = 20.0  # ~ one epoch of the codec's budget (8 one-second segments per step); ~30 s of espeak
VIDEO_CLIPS = 400


def budget_steps(cfg: Config, budget_s: float, max_steps: int, min_steps: int = 20) -> int:
    """Training steps of ``cfg`` (its task, model, data and batch size) that fit ``budget_s`` seconds on
    this machine, clamped to [min_steps, max_steps]: one step warms up allocators, then the median of
    three timed steps (one step timed alone was off by 2-5x on a shared, loaded machine)."""
    task = get_task(cfg.task)
    model, data = task.build_model(cfg), task.build_dataset(cfg)
    if isinstance(data, ShardStream):  # the omni corpus streams micro-batches of train.batch_size rows
        batch = next(data.batches())
    else:
        batch = task.collate([data[i % len(data)] for i in range(cfg.train.batch_size)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for _ in range(4):
        t = time.perf_counter()
        loss, _ = task.loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    per_step = sorted(times[1:])[1]
    steps = int(max(min_steps, min(max_steps, budget_s / per_step)))
    print(f"   {cfg.name}: {per_step:.2f} s per step here: {steps} steps fit the {budget_s:.0f} s training budget")
    return steps


def trained_tokenizer_run(run: Path, cfg: Config, section: str) -> Optional[Path]:
    """The tokenizer folder of ``run`` if it is a finished training of ``cfg``'s tokenizer: its newest
    checkpoint reached the run's own ``train.steps``, carries ``tokenizer/``, and its ``section`` of
    the config equals ``cfg``'s (an edited config means a retrain). None otherwise."""
    try:
        step = resolve_checkpoint(run)
        saved = load_config_file(step / "config.yaml")
        done = read_trainer_state(step)["step"] >= saved.train.steps
    except (CheckpointError, KeyError):
        return None
    ok = done and (step / "tokenizer" / "tokenizer.json").is_file() and not config_mismatch(saved, cfg, (section,))
    return step / "tokenizer" if ok else None


def build_tokenizer_corpus(name: str, cfg: Config) -> None:
    """The corpus tokenizer ``name`` trains on (docs/tokenizers.md), unless it is already there."""
    sec = cfg.section(TOKENIZERS[name].section)
    if (Path(sec.data_path) / "info.json").is_file():  # each builder writes info.json last
        print(f"   {name} corpus: {sec.data_path} (exists)")
        return
    print(f"   building the {name} corpus -> {sec.data_path}")
    if name == "codec":
        build_speech_corpus(sec.data_path, sec.sample_rate, minutes=SPEECH_MINUTES)
    elif name == "image":
        build_image_corpus(sec.data_path)
    else:
        build_video_corpus(sec.data_path, sec.image_size, sec.clip_frames, VIDEO_CLIPS)


def train_tokenizers(timings: dict[str, float], budget_scale: float = 1.0, from_scratch: bool = False) -> dict[str, Path]:
    """Train the codec, image and video tokenizers with the one Trainer into runs/demo-NAME (each
    within its time budget x ``budget_scale``), reusing finished runs; adds each stage's seconds to
    ``timings``. The codec is the shipped codec-tiny (sha256-checked, omni/assets/codec-tiny/MODEL_CARD.md)
    unless ``from_scratch``: fitting and training it costs ~10 min of one core. Returns name -> folder."""
    runs = {}
    for name, stage in TOKENIZERS.items():
        t0 = time.perf_counter()
        if name == "codec" and not from_scratch:
            shipped_codec()  # raises if the weights do not match their recorded sha256
            print(f"== codec tokenizer: the shipped weights {SHIPPED_CODEC} (sha256 checked; how they were trained: "
                  f"MODEL_CARD.md there; --from-scratch trains one from {stage.config})")
            runs[name] = SHIPPED_CODEC
            timings[f"{name} tokenizer"] = time.perf_counter() - t0
            continue
        run = Path(f"runs/demo-{name}")
        cfg = load_config(stage.config, [f"train.out_dir={run}", "train.tensorboard=false"])
        folder = trained_tokenizer_run(run, cfg, stage.section)
        if folder is not None:
            print(f"== {name} tokenizer: {folder} (a finished run of {stage.config}; delete {run} to retrain)")
        else:
            print(f"== training the {name} tokenizer ({stage.config}) into {run}")
            build_tokenizer_corpus(name, cfg)
            cfg.train.steps = budget_steps(cfg, stage.budget_s * budget_scale, cfg.train.steps)
            cfg.train.warmup_steps = min(cfg.train.warmup_steps, cfg.train.steps // 5)
            Trainer(cfg, get_task(cfg.task), argparse.Namespace(deepspeed=None, fsdp=False, resume=None, overwrite=True)).fit()
            records = read_metrics(run)
            m = stage.metric
            print(f"   {m} {records[0][m]:.3f} (step {records[0]['step']}) -> {records[-1][m]:.3f} "
                  f"(step {records[-1]['step']}); {time.perf_counter() - t0:.0f} s with the corpus")
        runs[name] = run
        timings[f"{name} tokenizer"] = time.perf_counter() - t0
    return runs


def install_shipped_omni(out: str) -> Path:
    """Check the shipped omni-tiny (omni/assets/omni-tiny: the sha256 of every weight file) and copy it
    into the run folder ``out`` (replaced if it exists) as ``checkpoints/step_N`` + ``latest``, so that
    ``out`` is a run folder like a trained one (``python -m omni.chat --checkpoint out``,
    ``eval/system_card.py --checkpoint out``). Returns the step folder."""
    source = shipped_omni()  # raises if a weight file does not match its recorded sha256
    run = Path(out)
    if run.exists():
        shutil.rmtree(run)
    step = run / "checkpoints" / f"{STEP_PREFIX}{read_trainer_state(source)['step']:07d}"
    shutil.copytree(source, step, ignore=shutil.ignore_patterns("MODEL_CARD.md"))
    (run / LATEST).write_text(f"checkpoints/{step.name}\n")
    return step


def train_omni(out: str, steps: Optional[int], scale: float, budget_scale: float, from_scratch: bool,
               timings: dict[str, float]) -> None:
    """Steps 4a-4c on this machine: tokenizers, corpus, omni training into ``out``; adds each stage's
    seconds to ``timings``."""
    runs = train_tokenizers(timings, budget_scale, from_scratch)
    cfg = load_config(CONFIG, [*DEMO_OVERRIDES, f"train.out_dir={out}", *(f"{TOKENIZERS[n].key}={r}" for n, r in runs.items())])
    t0 = time.perf_counter()
    sources = {name: str(tokenizer_folder(str(run))) for name, run in runs.items()}
    try:
        fresh = read_shard_index(cfg.data.path)["tokenizer_sources"] == sources
    except (FileNotFoundError, ValueError):
        fresh = False
    if fresh:
        print(f"== omni corpus: {cfg.data.path} (exists, built from these tokenizers)")
    else:
        print(f"== building the omni demo corpus from the trained tokenizers -> {cfg.data.path}")
        build_omni_corpus(cfg, scale=scale)
    tasks = read_shard_index(cfg.data.path)["tasks"]
    timings["omni corpus"] = time.perf_counter() - t0
    print(f"   conversations per task: {json.dumps(tasks)} ({timings['omni corpus']:.0f} s)")

    t0 = time.perf_counter()
    cfg.train.steps = steps or budget_steps(cfg, TRAIN_BUDGET_S * budget_scale, DEMO_STEPS)
    print(f"== training {cfg.name} ({cfg.train.steps} steps x {cfg.train.batch_size} rows of {cfg.data.seq_len}) into {out}")
    Trainer(cfg, get_task("omni"), argparse.Namespace(deepspeed=None, fsdp=False, resume=None, overwrite=True)).fit()
    records = read_metrics(out)
    last = records[-1]
    print(f"   loss {records[0]['loss']:.2f} -> {last['loss']:.2f}; text {last['loss_text']:.2f}, monologue "
          f"{last['loss_monologue']:.2f}, audio codes {last['loss_audio']:.2f}, image {last['loss_image']:.2f} "
          f"({time.perf_counter() - t0:.0f} s)")
    timings["omni training"] = time.perf_counter() - t0


def run_omni_demo(out: str = "runs/demo-omni", steps: Optional[int] = None, scale: float = 0.3,
                  budget_scale: float = 1.0, judge: str = "base", train: bool = False,
                  from_scratch: bool = False) -> dict[str, float]:
    """The shipped omni-tiny (sha256-checked, copied into ``out``) or, with ``train`` / ``from_scratch``,
    tokenizers -> corpus -> train on this machine; then the spoken turns, image questions and drawings
    (see module docstring). ``steps`` fixes the omni training steps; else they fit TRAIN_BUDGET_S x
    ``budget_scale``. Returns the seconds each stage took."""
    timings: dict[str, float] = {}
    if train or from_scratch:
        train_omni(out, steps, scale, budget_scale, from_scratch, timings)
    else:
        t0 = time.perf_counter()
        step = install_shipped_omni(out)
        print(f"== omni model: the shipped omni-tiny {SHIPPED_OMNI} (sha256 checked; how it was trained, on what, and "
              f"its metrics: MODEL_CARD.md there) -> {step}\n   --train trains one here instead (tokenizers, corpus, "
              f"{DEMO_STEPS} steps: its answers are far from the shipped model's), --from-scratch the codec too")
        timings["omni model (shipped)"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    bot = OmniChat.load(out, serving=load_config(CONFIG).serving)  # serving knobs from the config, not the checkpoint
    answers = Path(out) / "answers"
    print(f"== is it right? (eval/demo_answers.py: captions, drawings, every spoken question) -> {answers}")
    evaluate(bot, answers, Judge(judge))
    print(f"== try it: python -m omni.chat --checkpoint {out} --audio {answers / 'questions' / '00.wav'} --out {Path(out) / 'chat'}")
    timings["omni answers"] = time.perf_counter() - t0
    return timings


def text_demo(args: argparse.Namespace) -> None:
    """Steps 1-3: the text foundation."""
    overrides = [f"train.out_dir={args.out}", *args.overrides]
    if args.steps:
        overrides.append(f"train.steps={args.steps}")
    cfg = load_config(args.config, overrides)
    task = get_task(cfg.task)
    if not (Path(cfg.data.path) / "index.json").is_file():
        print(f"== no corpus at {cfg.data.path}: building the demo text corpus (data/build_text.py)")
        build_text_corpus(cfg)

    print(f"== training {cfg.name} ({cfg.train.steps} steps) into {cfg.train.out_dir}")
    Trainer(cfg, task, argparse.Namespace(deepspeed=None, fsdp=False, resume=None, overwrite=True)).fit()

    run = Path(cfg.train.out_dir)
    records = read_metrics(run)
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    print(f"== loss {records[0]['loss']:.3f} (step 1) -> {records[-1]['loss']:.3f} (step {records[-1]['step']}), "
          f"{sum(speeds) / max(1, len(speeds)):.0f} tokens/s")

    # Reload from disk, as a user of the checkpoint would.
    saved_cfg, state = load_model_state(run)
    model = task.build_model(saved_cfg)
    model.load_state_dict(state)
    torch.manual_seed(0)
    print("== sample:\n" + (task.demo(model, saved_cfg) or "(this task has no text sample)"))
    print(f"== checkpoint: {resolve_checkpoint(run)}")
    print(f"   TensorBoard: tensorboard --logdir {run / 'tensorboard'}")


def omni_demo(args: argparse.Namespace) -> dict[str, float]:
    """Steps 4-5: the omni model; returns the seconds of each stage."""
    return run_omni_demo(args.omni_out, args.omni_steps, args.omni_scale, args.budget_scale, args.judge, args.train,
                         args.from_scratch)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m omni.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny")
    p.add_argument("--steps", type=int, default=None, help="text training steps (default: the config's)")
    p.add_argument("--out", default="runs/demo", help="text run folder (replaced if it exists)")
    p.add_argument("--only", choices=("text", "omni"), default=None, help="run one part of the demo")
    p.add_argument("--omni-steps", type=int, default=None, help="with --train: omni training steps (default: as many as fit ~7 min, at most 350)")
    p.add_argument("--omni-scale", type=float, default=0.3, help="with --train: omni demo corpus size (x data/build_omni.py's COUNTS)")
    p.add_argument("--omni-out", default="runs/demo-omni", help="omni run folder (replaced if it exists)")
    p.add_argument("--budget-scale", type=float, default=1.0,
                   help="with --train: multiply the training time budgets of the tokenizers and the omni model (default: ~10 min in all)")
    p.add_argument("--train", action="store_true",
                   help="train the omni model (and its image and video tokenizers) here instead of using the shipped "
                        "omni/assets/omni-tiny; the codec stays the shipped codec-tiny")
    p.add_argument("--from-scratch", action="store_true",
                   help="train everything here, the speech codec too (implies --train)")
    p.add_argument("--judge", default="base", choices=("base", "tiny.en"),
                   help="Whisper model that transcribes the spoken replies (tiny.en: quicker, less exact)")
    p.add_argument("overrides", nargs="*", help="text config overrides, key=value")
    args = p.parse_args(argv)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if args.only != "omni":
        text_demo(args)
        timings["text (corpus, training, sample)"] = time.perf_counter() - start
    if args.only != "text":
        timings.update(omni_demo(args))
    print("== stages: " + ", ".join(f"{name} {s:.0f} s" for name, s in timings.items())
          + f"; total {time.perf_counter() - start:.0f} s (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
