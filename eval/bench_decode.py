"""Decode benchmark: milliseconds per generated token, greedy, batch 1, the same weights in
our ``omni.infer.text.generate`` (static KV cache; on CUDA also ``compile=True``, the library's fast
path: torch.compile "reduce-overhead" = CUDA graphs for the decode step, as gpt-fast does) and in
transformers' LlamaForCausalLM ``generate`` (eager, use_cache).

    python eval/bench_decode.py                            # SmolLM2-135M, prompt 64, 128 new tokens
    python eval/bench_decode.py --config tiny              # random weights of a config's shape
    python eval/bench_decode.py --out runs/bench_decode.json --new-tokens 256

ms/token = (time for N new tokens - time for 1 new token) / (N - 1): prefill and the first
token are excluded, so the figure is the steady decode step. The ratio is transformers / ours
(> 1: ours is faster). The greedy tokens of both are compared as a sanity check.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from omni.config import Config, load_config
from omni.model.build import build_model
from omni.model.decoder import Decoder
from omni.infer.text import generate

# Our state-dict names -> transformers' Llama names (both use the rotate-half RoPE layout).
_HF_BLOCK = {
    "attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj", "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj", "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}


def to_transformers(model: Decoder) -> torch.nn.Module:
    """A transformers LlamaForCausalLM holding exactly ``model``'s weights (same device and dtype)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    c = model.cfg
    if c.qk_norm:
        raise ValueError("transformers' Llama has no QK-norm; benchmark a config with model.qk_norm=false")
    hf_cfg = LlamaConfig(
        vocab_size=model.vocab_size, hidden_size=c.dim, intermediate_size=c.ffn_dim, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, max_position_embeddings=c.max_seq_len,
        rms_norm_eps=c.norm_eps, rope_theta=c.rope_theta, tie_word_embeddings=c.tie_embeddings,
        attention_bias=False, mlp_bias=False, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("layers."):
            _, i, rest = key.split(".", 2)
            name, suffix = rest.rsplit(".", 1)
            state[f"model.layers.{i}.{_HF_BLOCK[name]}.{suffix}"] = value
        else:
            state[{"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
                   "output.weight": "lm_head.weight"}[key]] = value
    hf = LlamaForCausalLM(hf_cfg).to(device=model.tok_embeddings.weight.device, dtype=model.tok_embeddings.weight.dtype)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"weight conversion incomplete: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(runners: dict[str, Callable[[int], list[int]]], n: int, device: torch.device, repeats: int,
            ) -> tuple[dict[str, dict[str, float]], dict[str, list[int]]]:
    """Best wall time of 1 and of ``n`` new tokens per runner, after a warm-up. Runners alternate within
    each repeat so that load from other processes hits all of them alike."""
    best = {(name, k): float("inf") for name in runners for k in (1, n)}
    tokens = {name: run(n) for name, run in runners.items()}  # warm-up (and compilation on CUDA)
    for _ in range(repeats):
        for name, run in runners.items():
            for k in (1, n):
                sync(device)
                t0 = time.perf_counter()
                run(k)
                sync(device)
                best[name, k] = min(best[name, k], time.perf_counter() - t0)
    rows = {name: {"ms_per_token": 1e3 * (best[name, n] - best[name, 1]) / (n - 1),
                   "first_token_ms": 1e3 * best[name, 1], "total_ms": 1e3 * best[name, n]} for name in runners}
    return rows, tokens


def ours(model: Decoder, prompt: list[int], compile: bool) -> Callable[[int], list[int]]:
    """The library's ``generate``: eager, or ``compile=True`` (omni/infer/compile.py: torch.compile of
    the one-token step; CUDA graphs on GPU). Nothing is patched here."""
    return lambda n: generate(model, [prompt], n, compile=compile)[0]


def transformers_eager(hf: torch.nn.Module, prompt: list[int]) -> Callable[[int], list[int]]:
    ids = torch.tensor([prompt], device=hf.device)

    @torch.no_grad()
    def run(n: int) -> list[int]:
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, use_cache=True, pad_token_id=0)
        return out[0, ids.shape[1]:].tolist()

    return run


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="smollm2-135m",
                    help="config name/path; its model.init_from gives the weights (default SmolLM2-135M)")
    ap.add_argument("--random", action="store_true", help="random weights of the config's shape (no file)")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    ap.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--compile", action="store_true", help="CPU: time compile=True too (always on CUDA)")
    ap.add_argument("--out", default="runs/bench_decode.json")
    ap.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    return ap.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    cfg: Config = load_config(args.config, args.overrides)
    if args.new_tokens < 2:
        raise ValueError("--new-tokens must be at least 2 (the first token is timed apart)")
    if args.random:
        cfg.model = dataclasses.replace(cfg.model, init_from="")
    torch.manual_seed(0)
    model = build_model(cfg).to(device=device, dtype=dtype).eval()
    hf = to_transformers(model)
    prompt = torch.randint(0, min(model.vocab_size, 49152), (args.prompt_len,), generator=torch.Generator().manual_seed(0)).tolist()
    n = args.new_tokens
    runners = {"ours (eager, static KV cache)": ours(model, prompt, compile=False)}
    if device.type == "cuda" or args.compile:
        graphs = "reduce-overhead, CUDA graphs" if device.type == "cuda" else "inductor CPU"
        runners[f"ours (compile=True: {graphs})"] = ours(model, prompt, compile=True)
    runners["transformers generate (eager, use_cache)"] = transformers_eager(hf, prompt)

    rows, tokens = measure(runners, n, device, args.repeats)
    baseline = rows["transformers generate (eager, use_cache)"]["ms_per_token"]
    ref = tokens["transformers generate (eager, use_cache)"]
    for name, row in rows.items():
        row["speedup_vs_transformers"] = baseline / row["ms_per_token"]
        # Greedy tokens agree until the first near-tie flips (bf16 makes that earlier).
        row["tokens_agree_with_transformers"] = next((i for i, (a, b) in enumerate(zip(tokens[name], ref)) if a != b), n)

    import transformers

    result = {
        "date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__, "transformers": transformers.__version__, "config": cfg.name,
        "weights": cfg.model.init_from or "random", "params": model.num_params(), "dtype": str(dtype).removeprefix("torch."),
        "prompt_len": args.prompt_len, "new_tokens": n, "results": rows,
    }
    print(f"decode, batch 1, greedy | {result['device']} | torch {result['torch']} | {result['dtype']} | "
          f"{cfg.name} ({result['params'] / 1e6:.1f}M params, weights: {result['weights']}) | prompt {args.prompt_len}, new {n}")
    print(f"{'':52s} {'ms/token':>9s} {'first ms':>9s} {'x vs HF':>8s} {'agree':>6s}")
    for name, row in rows.items():
        print(f"{name:52s} {row['ms_per_token']:9.2f} {row['first_token_ms']:9.1f} "
              f"{row['speedup_vs_transformers']:8.2f} {row['tokens_agree_with_transformers']:6d}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
