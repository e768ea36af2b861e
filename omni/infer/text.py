"""Public inference API: load a model from a checkpoint or a config, and generate text.

    from omni import load_model, TextGenerator
    model, tokenizer, cfg = load_model("configs/smollm2-135m.yaml")     # or "runs/tiny"
    gen = TextGenerator(model, tokenizer)
    gen.chat([{"role": "user", "content": "What is the capital of France?"}])
    gen.generate("Once upon a time", max_new_tokens=50, sampling=SamplingConfig(temperature=0.8))

Command line (:func:`main`, run by ``python -m omni.generate``)::

    python -m omni.generate --config configs/smollm2-135m.yaml --prompt "What is the capital of France?"
    python -m omni.generate --checkpoint runs/tiny --prompt "Once upon a time" --temperature 0.8 --top-k 50

A model initialised from a pretrained instruct model (``model.init_from``) is prompted through its
chat template by default; other models continue the prompt. ``--raw`` / ``--chat`` force either.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from omni.config import Config, ConfigError, load_config, resolve_config_path
from omni.infer.load import decoder_shape, load_checkpoint
from omni.model.build import build_model
from omni.model.decoder import Decoder
from omni.model.sampling import SamplingConfig, generate
from omni.tokenizers.base import TextTokenizer, load_tokenizer
from omni.tokenizers.text import build_text_tokenizer

__all__ = ["load_model", "TextGenerator"]


def _default_device(device: Optional[str | torch.device]) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_model(
    checkpoint_or_config: str | Path | Config,
    device: Optional[str | torch.device] = None,
    overrides: Sequence[str] = (),
    dtype: Optional[torch.dtype] = None,
) -> tuple[Decoder, TextTokenizer, Config]:
    """(model in eval mode, tokenizer, config) from a checkpoint or a config.

    Args:
        checkpoint_or_config: a run folder (``runs/NAME``, follows ``latest``), a step folder, a YAML
            config path or name in configs/ (pretrained via ``model.init_from`` or random init), or a
            :class:`Config`.
        device: default CUDA when available, else CPU.
        overrides: ``section.key=value`` strings applied to a YAML config (e.g. ``model.attention=sdpa``);
            a checkpoint always uses the config it was saved with.
        dtype: parameter dtype; default bfloat16 on CUDA, float32 on CPU.
    """
    device = _default_device(device)
    if isinstance(checkpoint_or_config, Config):
        cfg = checkpoint_or_config
        model, tokenizer = build_model(cfg), build_text_tokenizer(cfg.tokenizer)
    elif Path(checkpoint_or_config).exists() and Path(checkpoint_or_config).suffix not in (".yaml", ".yml"):
        if overrides:
            raise ValueError("overrides apply to YAML configs; a checkpoint is loaded with the config it was saved with")
        model, cfg, step = load_checkpoint(checkpoint_or_config, decoder_shape)
        tok_dir = step / "tokenizer"
        tokenizer = load_tokenizer(tok_dir) if (tok_dir / "tokenizer.json").exists() else build_text_tokenizer(cfg.tokenizer)
    else:
        try:
            path = resolve_config_path(checkpoint_or_config)
        except ConfigError as e:
            raise FileNotFoundError(
                f"{checkpoint_or_config} is neither a checkpoint (run folder or step folder) nor a config: {e}"
            ) from e
        cfg = load_config(path, list(overrides))
        model, tokenizer = build_model(cfg), build_text_tokenizer(cfg.tokenizer)
    if tokenizer.vocab_size > model.vocab_size:
        raise ConfigError(
            f"tokenizer has {tokenizer.vocab_size} ids but model.vocab_size is {model.vocab_size}; "
            "raise model.vocab_size in the config"
        )
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    return model.to(device=device, dtype=dtype).eval(), tokenizer, cfg


class TextGenerator:
    """Text in, text out over a decoder and its tokenizer (greedy by default)."""

    def __init__(self, model: Decoder, tokenizer: TextTokenizer) -> None:
        self.model = model
        self.tokenizer = tokenizer

    def _run(self, ids: list[int], max_new_tokens: int, sampling: SamplingConfig, stop_ids: Sequence[int],
             seed: Optional[int]) -> str:
        context = self.model.cfg.max_seq_len
        if len(ids) >= context:
            raise ValueError(
                f"the prompt has {len(ids)} tokens but the model context (model.max_seq_len) is {context}; "
                "shorten the prompt"
            )
        # Never ask for more than the context has room for.
        max_new_tokens = min(max_new_tokens, context - len(ids))
        device = self.model.tok_embeddings.weight.device
        generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
        out = generate(self.model, [ids], max_new_tokens, sampling, stop_ids=stop_ids, generator=generator)[0]
        if out and out[-1] in stop_ids:
            out = out[:-1]
        return self.tokenizer.decode(out)

    def generate(self, prompt: str, max_new_tokens: int = 128, sampling: SamplingConfig = SamplingConfig(),
                 seed: Optional[int] = None) -> str:
        """Plain continuation of ``prompt`` (stops at the tokenizer's end-of-text)."""
        ids = self.tokenizer.encode(prompt)
        if not ids:
            ids = [self.tokenizer.bos_id]
        return self._run(ids, max_new_tokens, sampling, [self.tokenizer.eos_id], seed)

    def chat(self, messages: list[dict[str, str]], max_new_tokens: int = 128,
             sampling: SamplingConfig = SamplingConfig(), seed: Optional[int] = None) -> str:
        """The assistant's reply to ``messages`` ([{"role": "user", "content": "..."}, ...])."""
        ids = self.tokenizer.chat_prompt(messages, add_generation_prompt=True)
        stop = [self.tokenizer.end_of_turn_id, self.tokenizer.eos_id]
        return self._run(ids, max_new_tokens, sampling, stop, seed)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m omni.generate", description="Generate text from a checkpoint or a config on the command line.")
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


def cli(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m omni.generate``: :func:`main`, with user errors as one line and exit status 2."""
    try:
        main(argv)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # user errors: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
