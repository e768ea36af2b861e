"""Public inference API: load a model from a checkpoint or a config, and generate text
(:func:`generate`: token ids in, token ids out, over the static KV cache, gpt-fast style).

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
from omni.infer.compile import decode_step
from omni.infer.load import decoder_shape, load_checkpoint
from omni.model.build import build_model
from omni.model.decoder import Decoder
from omni.model.sampling import SamplingConfig, sample
from omni.tokenizers.base import TextTokenizer, load_tokenizer
from omni.tokenizers.text import build_text_tokenizer

__all__ = ["generate", "load_model", "TextGenerator"]


@torch.no_grad()
def generate(
    model: Decoder,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    sampling: SamplingConfig = SamplingConfig(),
    stop_ids: Sequence[int] = (),
    generator: Optional[torch.Generator] = None,
    compile: bool = False,
    vocab_size: Optional[int] = None,
) -> list[list[int]]:
    """Generate continuations for a batch of token-id prompts (lengths may differ).

    ``vocab_size``: only ids below it are ever produced — pass the tokenizer's ``vocab_size``, since
    the model's vocabulary is padded (to a multiple of 64) with ids no tokenizer can decode.
    Default (or larger than the model's): the model's own size.

    The common prefix length is prefilled in one call; rows with longer prompts are then fed their
    remaining prompt tokens while the others already sample, so no padding ever enters the cache.
    Returns the new tokens of each row (without the prompt), cut after the first stop id.
    ``compile``: one-token steps take the fast path (omni/infer/compile.py); the cache then spans
    the whole context, so that every call has the same shapes and reuses one compiled step.
    """
    sampling.validate()
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    device = model.tok_embeddings.weight.device
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    max_len = int(lengths.max()) + max_new_tokens
    if max_len > model.cfg.max_seq_len:
        raise ValueError(
            f"prompt ({int(lengths.max())} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model context "
            f"({model.cfg.max_seq_len}); shorten the prompt or ask for fewer tokens"
        )
    batch = len(prompts)
    padded = torch.zeros(batch, int(lengths.max()), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        padded[i, : len(p)] = torch.as_tensor(list(p), dtype=torch.long)
    model.check_tokens(padded)
    if vocab_size is not None and vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    # A tokenizer may know more ids than the model has (specials added to a bare pretrained model).
    limit = model.vocab_size if vocab_size is None else min(int(vocab_size), model.vocab_size)
    stop = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
    common = int(lengths.min())
    out = torch.zeros(batch, max_new_tokens, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    was_training = model.training
    model.eval()
    try:
        step = decode_step(model, compile)
        with model.streaming(batch, max_len=model.cfg.max_seq_len if compile else max_len):
            # Prefill: only the last position needs vocabulary logits.
            logits = model.logits(model(padded[:, :common], return_hidden=True)[:, -1])[:, :limit]
            pos = common  # absolute position of the token about to be chosen
            n_out = torch.zeros(batch, dtype=torch.long, device=device)
            while True:
                nxt = sample(logits, sampling, generator)
                in_prompt = lengths > pos
                nxt = torch.where(in_prompt, padded[:, min(pos, padded.shape[1] - 1)], nxt)
                emitting = ~in_prompt & ~done & (n_out < max_new_tokens)
                out[emitting, n_out[emitting]] = nxt[emitting]
                n_out += emitting.long()
                if stop.numel():
                    done |= emitting & torch.isin(nxt, stop)
                done |= n_out >= max_new_tokens
                if bool(done.all()):
                    break
                logits = step(nxt[:, None])[:, -1, :limit]
                pos += 1
    finally:
        model.train(was_training)
    results = []
    for i in range(batch):
        row = out[i, : int(n_out[i])].tolist()
        for j, t in enumerate(row):
            if t in stop_ids:
                row = row[: j + 1]
                break
        results.append(row)
    return results


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
    """Text in, text out over a decoder and its tokenizer (greedy by default). ``compile=True``:
    the fast decode path (omni/infer/compile.py)."""

    def __init__(self, model: Decoder, tokenizer: TextTokenizer, compile: bool = False) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.compile = compile

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
        out = generate(self.model, [ids], max_new_tokens, sampling, stop_ids=stop_ids, generator=generator,
                       vocab_size=self.tokenizer.vocab_size, compile=self.compile)[0]
        if out and out[-1] in stop_ids:
            out = out[:-1]
        return self.tokenizer.decode(out)

    def generate(self, prompt: str | Sequence[int], max_new_tokens: int = 128,
                 sampling: SamplingConfig = SamplingConfig(), seed: Optional[int] = None) -> str:
        """Plain continuation of ``prompt`` (stops at the tokenizer's end-of-text).

        A string is literal text (special spellings in it stay characters). Trusted callers who need
        special tokens pass token ids instead, e.g. ``[tok.bos_id, *tok.encode(text)]``; they are
        used as given."""
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        else:
            ids = [int(i) for i in prompt]
            if any(not 0 <= i < self.tokenizer.vocab_size for i in ids):
                raise ValueError(f"prompt ids must lie in [0, {self.tokenizer.vocab_size}) (the tokenizer's vocabulary)")
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
