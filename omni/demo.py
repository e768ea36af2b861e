"""``make demo``: the text foundation, then the omni model, end to end on a CPU in minutes.

Text (configs/tiny.yaml):

1. build the demo corpus and its sentencepiece tokenizer if missing (data/build_text.py);
2. train configs/tiny.yaml from scratch with the one Trainer (fresh run folder ``runs/demo``);
3. reload the checkpoint it wrote and print generated text and where the checkpoint lives.

Omni (configs/omni-tiny.yaml, see docs/omni.md):

4. train the speech codec, image and video tokenizers with the same Trainer (configs/{codec,image,
   video}-tiny.yaml, ~3 / 1.5 / 1 min) into ``runs/demo-{codec,image,video}``, reusing finished runs;
5. build the multi-task demo corpus from them (data/build_omni.py: text, ASR, TTS, spoken QA in many
   voices answered in one assistant voice, captions, text -> image, video description);
6. train the omni model from scratch for ~5 minutes (tokenizers frozen) into ``runs/demo-omni``;
7. answer one spoken question in a streamed turn — 80 ms chunks in, VAD ends the turn, frames out
   as they are decoded — writing ``reply.wav`` and printing the latency line; then answer one image
   question and draw one picture.

    python -m omni.demo [--only text|omni] [--steps N] [--omni-steps N] [--budget-scale X] [--out runs/demo] [key=value ...]

Each stage prints what it does and how long it took; the demo ends with the time of every stage.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from omni.config import load_config
from omni.train.checkpoint import load_model_state, resolve_checkpoint
from omni.train.task import get_task
from omni.train.trainer import Trainer, read_metrics


def text_demo(args: argparse.Namespace) -> None:
    """Steps 1-3: the text foundation."""
    overrides = [f"train.out_dir={args.out}", *args.overrides]
    if args.steps:
        overrides.append(f"train.steps={args.steps}")
    cfg = load_config(args.config, overrides)
    task = get_task(cfg.task)

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
    """Steps 4-7: the omni model (eval/demo_pipeline.py); returns the seconds of each stage."""
    from omni.eval.demo_pipeline import run_omni_demo

    return run_omni_demo(args.omni_out, args.omni_steps, args.omni_scale, args.budget_scale)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny")
    p.add_argument("--steps", type=int, default=None, help="text training steps (default: the config's)")
    p.add_argument("--out", default="runs/demo", help="text run folder (replaced if it exists)")
    p.add_argument("--only", choices=("text", "omni"), default=None, help="run one part of the demo")
    p.add_argument("--omni-steps", type=int, default=None, help="omni training steps (default: sized for ~5 min)")
    p.add_argument("--omni-scale", type=float, default=0.35, help="omni demo corpus size (x data/build_omni.py's)")
    p.add_argument("--omni-out", default="runs/demo-omni", help="omni run folder (replaced if it exists)")
    p.add_argument("--budget-scale", type=float, default=1.0,
                   help="multiply the training time budgets of the tokenizers and the omni model (default: ~10 min in all)")
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
