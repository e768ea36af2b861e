"""``make demo``: the text foundation end to end on a CPU in a few minutes.

1. build the demo corpus and its sentencepiece tokenizer if missing (data/build_text.py);
2. train configs/tiny.yaml from scratch with the one Trainer (fresh run folder ``runs/demo``);
3. reload the checkpoint it wrote and print generated text and where the checkpoint lives.

    python -m omni.demo [--steps N] [--out runs/demo] [key=value ...]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from omni.config import load_config
from omni.train.checkpoint import load_model_state, resolve_checkpoint
from omni.train.task import get_task
from omni.train.trainer import Trainer


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the config's)")
    p.add_argument("--out", default="runs/demo", help="run folder (replaced if it exists)")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = p.parse_args(argv)
    overrides = [f"train.out_dir={args.out}", *args.overrides]
    if args.steps:
        overrides.append(f"train.steps={args.steps}")
    cfg = load_config(args.config, overrides)
    task = get_task(cfg.task)

    print(f"== training {cfg.name} ({cfg.train.steps} steps) into {cfg.train.out_dir}")
    Trainer(cfg, task, argparse.Namespace(deepspeed=None, fsdp=False, resume=None, overwrite=True)).fit()

    run = Path(cfg.train.out_dir)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
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


if __name__ == "__main__":
    main()
