"""The one training entry point.

    python train.py --config configs/tiny.yaml [key=value ...]
    torchrun --nproc_per_node=N train.py --config configs/X.yaml --deepspeed configs/deepspeed/zero2.json
    torchrun --nproc_per_node=N train.py --config configs/X.yaml --fsdp
    python train.py --config configs/tiny.yaml --resume [RUN_OR_STEP_FOLDER]

See docs/training.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omni.config import ConfigError, load_config
from omni.train.checkpoint import CheckpointError
from omni.train.task import get_task
from omni.train.trainer import RunExistsError, Trainer, TrainingDiverged


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train an omni task.", formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__)
    p.add_argument("--config", required=True, help="YAML file or name in configs/ (e.g. tiny)")
    p.add_argument("--task", default=None, help="task to train (default: the config's `task`)")
    p.add_argument("--deepspeed", default=None, metavar="JSON", help="DeepSpeed config, e.g. configs/deepspeed/zero3.json")
    p.add_argument("--fsdp", action="store_true", help="shard with FSDP2 (torch.distributed.fsdp.fully_shard)")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                   help="continue train.out_dir's latest checkpoint, or the run/step folder PATH")
    p.add_argument("--overwrite", action="store_true", help="delete an existing train.out_dir and start over")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    p.add_argument("overrides", nargs="*", help="config overrides such as train.steps=20 model.dim=128")
    args = p.parse_intermixed_args(argv)  # options and key=value overrides in any order
    if args.resume and "=" in args.resume and not Path(args.resume).exists():
        args.overrides.insert(0, args.resume)  # `--resume train.steps=400`: an override, not a path
        args.resume = ""
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        overrides = list(args.overrides) + ([f"task={args.task}"] if args.task else [])
        cfg = load_config(args.config, overrides)
        task = get_task(cfg.task)
        if task.own_loop:
            task.run(cfg, args)
        else:
            Trainer(cfg, task, args).fit()
    except (ConfigError, CheckpointError, RunExistsError, TrainingDiverged, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
