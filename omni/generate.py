"""Generate text from a checkpoint or a config on the command line.

    python -m omni.generate --config configs/smollm2-135m.yaml --prompt "What is the capital of France?"
    python -m omni.generate --checkpoint runs/tiny --prompt "Once upon a time" --temperature 0.8 --top-k 50

A model initialised from a pretrained instruct model (``model.init_from``) is prompted through its
chat template by default; other models continue the prompt. ``--raw`` / ``--chat`` force either.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from omni.infer.text import TextGenerator, load_model
from omni.model.sampling import SamplingConfig


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m omni.generate", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="run folder (runs/NAME) or step folder")
    src.add_argument("--config", help="YAML config (path or name in configs/): pretrained or random init")
    p.add_argument("--prompt", required=True, help="the user message (chat) or the text to continue (raw)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--raw", action="store_true", help="plain continuation, no chat template")
    mode.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument("--system", default=None, help="system message for --chat")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1.0 = off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("overrides", nargs="*", help="section.key=value config overrides (with --config)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> str:
    args = parse_args(argv)
    model, tokenizer, cfg = load_model(args.checkpoint or args.config, device=args.device, overrides=args.overrides)
    sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    gen = TextGenerator(model, tokenizer)
    chat = args.chat or (not args.raw and bool(cfg.model.init_from))
    if chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": args.prompt}
        ]
        text = gen.chat(messages, args.max_new_tokens, sampling, seed=args.seed)
    else:
        text = gen.generate(args.prompt, args.max_new_tokens, sampling, seed=args.seed)
    print(text)
    return text


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # user errors: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
