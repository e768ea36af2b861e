"""Batched completions from a policy over the static KV cache (omni.model.sampling)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from omni.align.data import write_jsonl
from omni.infer.text import generate
from omni.model.decoder import Decoder
from omni.model.sampling import SamplingConfig
from omni.tokenizers.base import TextTokenizer


def stop_ids(tok: TextTokenizer) -> list[int]:
    """End-of-turn ids the policy may emit: ours and the chat template's (ChatML ``<|im_end|>``)."""
    out = []
    for name in ("<|eos|>", "<|end_of_turn|>", "<|im_end|>"):
        try:
            out.append(tok.token_id(name))
        except KeyError:
            pass
    return out


def prompt_ids(tok: TextTokenizer, prompts: Sequence[str], max_prompt: int) -> list[list[int]]:
    """Chat-formatted prompts with the assistant turn opened, keeping the last ``max_prompt`` tokens."""
    return [tok.chat_prompt([{"role": "user", "content": p}])[-max_prompt:] for p in prompts]


def complete(policy: Decoder, tok: TextTokenizer, prompts: Sequence[str], max_new_tokens: int, max_prompt: int = 48,
             sampling: SamplingConfig = SamplingConfig(), batch_size: int = 16, seed: int = 0,
             progress: bool = False) -> list[str]:
    """Text completions of ``prompts`` (stop tokens removed), generated in batches."""
    stops, gen = stop_ids(tok), torch.Generator(device=policy.tok_embeddings.weight.device).manual_seed(seed)
    out: list[str] = []
    starts = range(0, len(prompts), batch_size)
    for s in tqdm(starts, desc="generating", disable=not progress):
        ids = generate(policy, prompt_ids(tok, prompts[s: s + batch_size], max_prompt), max_new_tokens, sampling, stops, gen,
                       vocab_size=tok.vocab_size)
        out += [tok.decode([t for t in row if t not in stops]).strip() for row in ids]
    return out


def helpful_answers(policy: Decoder, tok: TextTokenizer, prompts: Sequence[str], path: str | Path, per_prompt: int = 3,
                    max_new_tokens: int = 192, temperatures: Sequence[float] = (0.3, 0.7, 1.0)) -> None:
    """Write ``per_prompt`` sampled answers of the instruct model per prompt to a JSONL file
    ({"prompt", "answer", "temperature"}) — the helpful content of synthetic completions and RM
    pairs. Answer k is sampled at ``temperatures[k % len(temperatures)]`` (top-k 40), so the grader
    sees the model's text from near-greedy to loose."""
    rows = []
    for k in range(per_prompt):
        t = temperatures[k % len(temperatures)]
        texts = complete(policy, tok, prompts, max_new_tokens, sampling=SamplingConfig(temperature=t, top_k=40),
                         seed=k, progress=True)
        rows += [{"prompt": p, "answer": a, "temperature": t} for p, a in zip(prompts, texts) if a]
    write_jsonl(path, rows)
