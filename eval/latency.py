"""Streaming speech-to-speech latency (DESIGN.md §5): time to first audio, step time, real-time factor.

    python eval/latency.py --config configs/omni-tiny.yaml                    # CPU, one thread
    python eval/latency.py --config configs/tiny.yaml                         # an lm config: its decoder shape
    python eval/latency.py --checkpoint runs/omni-tiny --turns 20             # a trained model
    python eval/latency.py --config configs/omni-135m.yaml --device cuda      # GPU: bf16, compile=True
    python eval/latency.py --compile                                          # CPU: compile=True too

What is timed, per spoken turn served by :class:`omni.infer.session.SpeechSession` (batch 1, ticks of
one 80 ms codec frame, explicit end of turn so VAD's silence wait — a policy, ``serving.end_of_turn_ms``
— is not counted; ``--vad`` adds Silero's per-frame cost to every tick). The session runs the
library's own path: ``compile=True`` (omni/infer/compile.py) on CUDA unless ``--no-compile``, and on
CPU with ``--compile``; nothing is patched here.

* **TTFA** (time to first audio): from handing over the chunk holding the turn's last input sample
  to the first output sample leaving the codec decoder — codec-encode that frame, prefill it with
  the end-of-turn markers, one decoder step + the depth decoder, codec-decode the first frame.
  p50 / p95 / min over ``--turns`` turns (after ``--warmup``).
* **step**: one decoder step per audio frame including the depth decoder's K steps (the text-stream
  token, then K codebooks), timed alone.
* **RTF**: wall time of the whole loop (every input and output tick: codec, decoder, depth, VAD)
  divided by the audio time it covers (ticks x 80 ms). < 1 keeps up with real time.

Two baselines, measured in the same run (ratios = baseline / omni, > 1: omni is faster):

* **HF eager generate**: a Llama of the same shape in HF transformers, eager attention, ``generate``
  with its dynamic KV cache, serving the same turn the way a plain codec-token LM does — audio
  frames flattened to K tokens each, the whole prompt prefilled when the turn ends, K tokens
  generated per output frame; the same codec costs are added.
* **Moshi LMGen**: Moshi's own streaming generator (PyPI ``moshi``, installed ``--no-deps``;
  ``LMModel`` + ``LMGen``, random weights) with the same shape — width, layers, heads (GQA as
  ``kv_repeat``), SwiGLU width, K codebooks per stream (its user and its own stream: ``n_q = 2K``,
  ``dep_q = K``), vocabulary, and a depth transformer of our depth decoder's width, layers, heads and
  SwiGLU width — in its released configuration otherwise (RoPE, RMSNorm, per-step depformer weights,
  acoustic delay of one frame). Moshi is full duplex: it takes one step per input frame whether
  the user speaks or not, so its time to first audio is 1 + max delay steps after the frame holding
  the last input sample, plus the same codec costs. It builds CUDA graphs itself on GPU.

Weights are random unless ``--checkpoint``: latency does not depend on them (replies are held at
``--reply-frames`` with ``min_reply_frames``). An lm config (task != omni, e.g. configs/tiny.yaml)
is benchmarked as the omni model with that decoder shape and everything else (omni, codec, tokenizer
sections) from configs/omni-tiny.yaml.
Prints a table and writes JSON (``--out``).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

# The `dev` extra's transformers (the HF generate baseline): without it, time_baseline raises ImportError.
try:
    from transformers import LlamaConfig, LlamaForCausalLM
except ImportError:
    LlamaConfig = LlamaForCausalLM = None
# PyPI moshi (the Moshi baseline; requirements-assets.txt, --no-deps): without it, time_moshi raises ImportError.
try:
    import moshi
    from moshi.models.lm import LMGen, LMModel
except ImportError:
    moshi = LMGen = LMModel = None

from omni.config import Config, ServingConfig, load_config
from omni.conversation import ConversationFormat, OmniVocab
from omni.data.build_omni import tokenizer_folder
from omni.infer.chat import OmniChat
from omni.infer.decoding import AUDIO, Decoding
from omni.infer.load import omni_model_shape
from omni.infer.session import SpeechSession
from omni.infer.vad import VoiceActivity
from omni.model.sampling import SamplingConfig
from omni.model.omni import OmniModel
from omni.tokenizers.base import SPECIAL_TOKENS, load_tokenizer
from omni.tokenizers.codec import SpeechCodec

Tensor = torch.Tensor
OMNI_BASE = "configs/omni-tiny.yaml"  # where an lm config's missing omni parts come from


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q / 100 * len(xs)) - 1))]


def stats_ms(xs: list[float]) -> dict[str, float]:
    ms = [1000 * x for x in xs]
    return {"p50": statistics.median(ms), "p95": percentile(ms, 95), "min": min(ms), "mean": statistics.fmean(ms), "n": len(ms)}


# ---- what to benchmark -------------------------------------------------------------------------
def synthetic_vocab(cfg: Config, codec: Any) -> OmniVocab:
    """Vocabulary layout of ``cfg`` without a corpus: tokenizer.vocab_size text ids (specials at their
    sentencepiece ids) plus the image/video code ranges of the config's tokenizer sections."""
    image_codes = math.prod(cfg.section("image_tok").levels)
    video_codes = math.prod(cfg.section("video_tok").levels)
    text = cfg.tokenizer.vocab_size
    if cfg.tokenizer.kind == "gguf":  # the GGUF vocabulary: whatever model.vocab_size leaves for text
        text = max(text, cfg.model.vocab_size - image_codes - video_codes)
    names = {n: SPECIAL_TOKENS.index(n) for n in SPECIAL_TOKENS if not n.startswith("<|reserved")}
    return OmniVocab(text, image_codes, (1, 1), video_codes, (1, 1), codec.cfg.num_codebooks, codec.cfg.codebook_size, names)


def build(args: argparse.Namespace) -> tuple[OmniModel, Any, ConversationFormat, str]:
    """(model, codec, format, description) for the checkpoint or config."""
    if args.checkpoint:
        bot = OmniChat.load(args.checkpoint, "cpu")
        return bot.model, bot.codec, bot.fmt, f"checkpoint {args.checkpoint}"
    cfg = load_config(args.config, args.overrides)
    note = f"config {args.config}"
    if cfg.task != "omni":  # e.g. configs/tiny.yaml: that decoder, served as the omni model of omni-tiny.yaml
        base = load_config(OMNI_BASE)
        base.model = cfg.model
        cfg = base
        note += f" (an lm config: its decoder with the omni, codec and tokenizer sections of {OMNI_BASE})"
    ocfg = cfg.section("omni")
    codec_dir = tokenizer_folder(ocfg.codec)  # the trained codec if there is one, else its shape at random
    codec = load_tokenizer(codec_dir) if codec_dir is not None else SpeechCodec(cfg.section("codec"))
    index = Path(cfg.data.path) / "index.json"
    if index.is_file():
        vocab = OmniVocab.from_dict(json.loads(index.read_text())["vocab"])
    else:
        vocab = synthetic_vocab(cfg, codec)
    torch.manual_seed(0)
    model = omni_model_shape(cfg, vocab, codec.quantizer.codebooks)  # random weights: latency does not depend on them
    # The benchmark never encodes text: the format only supplies special ids (text tokenizer unused).
    return model.eval(), codec.eval(), ConversationFormat(None, vocab), note


def serving_mode(model: OmniModel, device: torch.device, compile: bool) -> str:
    """On CUDA: bf16 weights (rotary tables stay fp32, as under autocast). The fast path itself is
    the session's ``compile`` flag."""
    if device.type == "cuda":
        model.to(torch.bfloat16)
        for dec in (model.decoder, model.depth.transformer):
            dec.rope_cos, dec.rope_sin = dec.rope_cos.float(), dec.rope_sin.float()
    dtype = "bf16" if device.type == "cuda" else "fp32"
    return f"{dtype}, compile=True" if compile else f"{dtype}, eager"


# ---- measurements ------------------------------------------------------------------------------
def time_turns(model: OmniModel, codec: Any, fmt: ConversationFormat, args: argparse.Namespace,
               device: torch.device) -> dict[str, Any]:
    """Serve ``warmup + turns`` spoken turns; TTFA per turn and the wall time of every tick."""
    hop = codec.hop_length
    vad = None
    if args.vad:
        vad = VoiceActivity(codec.sample_rate)
    # Replies of exactly --reply-frames; with --vad, Silero runs on every frame but (hearing noise as
    # speech now and then) may not end turns or barge in: turns end explicitly.
    serve = ServingConfig(max_reply_frames=args.reply_frames, end_of_turn_ms=10**9, barge_in_ms=10**9)
    g = torch.Generator().manual_seed(0)
    ttfa, tick_s, ticks, first_ok = [], 0.0, 0, True
    for turn in range(args.warmup + args.turns):
        wav = torch.randn(1, 1, args.turn_frames * hop, generator=g) * 0.1
        sess = SpeechSession(model, codec, fmt, 1, vad=vad, sampling=SamplingConfig(), serving=serve,
                             min_reply_frames=args.reply_frames, compile=args.compile)
        with sess:
            t_turn = time.perf_counter()
            for i in range(args.turn_frames - 1):
                sess.tick(wav[..., i * hop : (i + 1) * hop])
            sync(device)
            t_last = time.perf_counter()  # the last input sample is handed over now
            out = sess.tick(wav[..., -hop:], end_turn=torch.tensor([True]))
            sync(device)
            t_first = time.perf_counter()  # the first output sample has left the codec decoder
            first_ok &= bool(out.speaking[0])
            n = 1
            for _ in sess.reply():
                n += 1
            sync(device)
            t_end = time.perf_counter()
        if turn >= args.warmup:
            ttfa.append(t_first - t_last)
            tick_s += t_end - t_turn
            ticks += args.turn_frames + n - 1
    if not first_ok:
        raise RuntimeError("a turn's last tick produced no audio: the session did not answer at once")
    frame_s = hop / codec.sample_rate
    return {"ttfa": stats_ms(ttfa), "rtf": tick_s / (ticks * frame_s), "ticks": ticks, "tick_ms": 1000 * tick_s / ticks}


@torch.no_grad()
def time_step(model: OmniModel, fmt: ConversationFormat, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """One decoder step + text head + depth decoder (K codebooks) per audio frame, after a prompt."""
    K = model.n_codebooks
    prompt = torch.full((1, args.turn_frames + 6), fmt.sp["<|text_pad|>"], device=device)
    audio = torch.zeros(1, prompt.shape[1], K, dtype=torch.long, device=device)
    steps = []
    dec = Decoding(model, fmt.vocab, min_frames=10**9, compile=args.compile)
    with dec.streaming(1):
        hidden = model(prompt, audio)[:, -1]
        dec.start(torch.ones(1, dtype=torch.bool, device=device), AUDIO)
        for i in range(args.warmup + args.reply_frames):
            sync(device)
            t = time.perf_counter()
            tok, codes = dec.choose(hidden)
            hidden = dec.feed(tok, codes)
            sync(device)
            if i >= args.warmup:
                steps.append(time.perf_counter() - t)
    return stats_ms(steps)


@torch.no_grad()
def time_codec(codec: Any, n: int = 20) -> dict[str, float]:
    """Streaming encode and decode of one frame (ms)."""
    hop = codec.hop_length
    wav = torch.randn(1, 1, hop)
    enc, dec = [], []
    with codec.streaming(1):
        codes = codec.encode(wav)
        for _ in range(n):
            t = time.perf_counter()
            codec.encode(wav)
            enc.append(time.perf_counter() - t)
            t = time.perf_counter()
            codec.decode(codes)
            dec.append(time.perf_counter() - t)
    return {"encode_ms": statistics.median(enc) * 1000, "decode_ms": statistics.median(dec) * 1000}


@torch.no_grad()
def time_baseline(model: OmniModel, codec_ms: dict[str, float], args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The same turn through HF transformers' eager ``generate`` on a same-shape Llama with flattened
    audio codes (K tokens per frame); see the module docstring."""
    if LlamaForCausalLM is None:
        raise ImportError("the HF generate baseline needs `pip install transformers`")
    c, K = model.decoder.cfg, model.n_codebooks
    vocab = c.vocab_size + K * model.codebook_size
    prompt_len = args.turn_frames * K + 6
    hf_cfg = LlamaConfig(vocab_size=vocab, hidden_size=c.dim, intermediate_size=c.ffn_dim, num_hidden_layers=c.n_layers,
                         num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, rms_norm_eps=c.norm_eps,
                         rope_theta=c.rope_theta, max_position_embeddings=prompt_len + K * (args.reply_frames + 1) + 8,
                         tie_word_embeddings=c.tie_embeddings)
    torch.manual_seed(0)
    hf = LlamaForCausalLM(hf_cfg).to(device=device, dtype=next(model.parameters()).dtype).eval()
    hf.config._attn_implementation = "eager"
    g = torch.Generator().manual_seed(1)
    gen_kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)

    def run(new_tokens: int) -> float:
        ids = torch.randint(0, vocab, (1, prompt_len), generator=g).to(device)
        sync(device)
        t = time.perf_counter()
        hf.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **gen_kw)
        sync(device)
        return time.perf_counter() - t

    first, full = [], []
    m = max(2, args.reply_frames // 2)
    for i in range(1 + args.baseline_turns):
        f, a = run(K), run(K * (1 + m))
        if i:  # the first round warms up
            first.append(f)
            full.append(a)
    first_ms = statistics.median(first) * 1000
    step_ms = max(0.0, (statistics.median(full) * 1000 - first_ms) / m)
    ttfa = [codec_ms["encode_ms"] / 1000 + f + codec_ms["decode_ms"] / 1000 for f in first]
    frame_ms = 1000 * args.frame_s
    loop_ms = (args.turn_frames * codec_ms["encode_ms"] + first_ms + codec_ms["decode_ms"]
               + (args.reply_frames - 1) * (step_ms + codec_ms["decode_ms"] + codec_ms["encode_ms"]))
    return {"ttfa": stats_ms(ttfa), "step_ms": step_ms, "rtf": loop_ms / ((args.turn_frames + args.reply_frames - 1) * frame_ms),
            "tokens_per_frame": K, "turns": len(first)}


@torch.no_grad()
def time_moshi(model: OmniModel, codec_ms: dict[str, float], args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Moshi's ``LMGen`` on an ``LMModel`` of the omni model's shape (see the module docstring)."""
    if LMModel is None:
        raise ImportError("the Moshi baseline needs PyPI moshi: `pip install --no-deps moshi==0.2.13` "
                          "(make venv installs it, requirements-assets.txt)")
    c, K, dep = model.decoder.cfg, model.n_codebooks, model.depth
    dcfg = dep.transformer.cfg
    delays = [0] + ([0] + [1] * (K - 1)) * 2  # text, then per stream: semantic codebook, acoustic ones a frame late
    torch.manual_seed(0)
    lm = LMModel(
        delays=delays, n_q=2 * K, dep_q=K, card=model.codebook_size, text_card=c.vocab_size, dim=c.dim, num_heads=c.n_heads,
        num_layers=c.n_layers, kv_repeat=c.n_heads // c.n_kv_heads,
        hidden_scale=1.5 * c.ffn_dim / c.dim,  # Moshi's gated FFN is 2/3 of dim_feedforward wide: = our SwiGLU
        norm="rms_norm_f32", gating="silu", positional_embedding="rope", max_period=c.rope_theta,
        context=c.max_seq_len, causal=True, layer_scale=None,
        depformer_dim=dcfg.dim, depformer_num_layers=dcfg.n_layers, depformer_num_heads=dcfg.n_heads,
        depformer_dim_feedforward=int(1.5 * dcfg.ffn_dim), depformer_multi_linear=True, depformer_context=K,
        depformer_gating="silu", depformer_pos_emb="none", depformer_weights_per_step=True, depformer_kv_repeat=1,
        device=device, dtype=next(model.parameters()).dtype,
    ).eval()
    gen = LMGen(lm, use_sampling=False)
    first_steps = 1 + max(delays)
    g = torch.Generator().manual_seed(2)
    first, steps = [], []
    with gen.streaming(1):
        for i in range(args.warmup + args.turns):
            sync(device)
            t = time.perf_counter()
            for _ in range(first_steps):
                out = gen.step(torch.randint(0, model.codebook_size, (1, K, 1), generator=g).to(device))
            sync(device)
            if out is None:
                raise RuntimeError("Moshi's LMGen returned no frame after its delays")
            if i >= args.warmup:
                first.append(time.perf_counter() - t)
        for _ in range(args.reply_frames):
            sync(device)
            t = time.perf_counter()
            gen.step(torch.randint(0, model.codebook_size, (1, K, 1), generator=g).to(device))
            sync(device)
            steps.append(time.perf_counter() - t)
    codec_s = (codec_ms["encode_ms"] + codec_ms["decode_ms"]) / 1000
    step_ms = statistics.median(steps) * 1000
    return {"ttfa": stats_ms([f + codec_s for f in first]), "step_ms": step_ms, "first_steps": first_steps,
            "rtf": (step_ms + 1000 * codec_s) / (1000 * args.frame_s), "moshi": moshi.__version__,
            "params": sum(p.numel() for p in lm.parameters())}


# ---- report -------------------------------------------------------------------------------------
def report(r: dict[str, Any]) -> str:
    o, b, m = r["omni"], r["baseline"], r["moshi"]
    rows = [
        ("time to first audio p50 (ms)", o["ttfa"]["p50"], b["ttfa"]["p50"], m["ttfa"]["p50"]),
        ("time to first audio p95 (ms)", o["ttfa"]["p95"], b["ttfa"]["p95"], m["ttfa"]["p95"]),
        ("time to first audio min (ms)", o["ttfa"]["min"], b["ttfa"]["min"], m["ttfa"]["min"]),
        ("decoder step per audio frame (ms)", o["step"]["p50"], b["step_ms"], m["step_ms"]),
        ("real-time factor (whole loop)", o["rtf"], b["rtf"], m["rtf"]),
    ]
    lines = [f"latency — {r['model']} on {r['device']} ({r['mode']}, {r['threads']} thread(s)), torch {r['torch']}",
             f"turn: {r['turn_frames']} input + {r['reply_frames']} output frames of {1000 * r['frame_s']:.0f} ms, "
             f"{r['turns']} turns; codec encode {r['codec']['encode_ms']:.1f} ms, decode {r['codec']['decode_ms']:.1f} ms per frame; "
             f"Moshi {m['moshi']} LMGen, {m['params'] / 1e6:.1f}M params, first audio after {m['first_steps']} steps",
             "", f"| {'measure':<36} | {'omni (this repo)':>16} | {'HF eager generate':>17} | {'ratio':>6} "
             f"| {'Moshi LMGen':>11} | {'ratio':>6} |",
             f"|{'-' * 38}|{'-' * 18}|{'-' * 19}|{'-' * 8}|{'-' * 13}|{'-' * 8}|"]
    for name, ours, base, moshi in rows:
        ratio = [f"{x / ours if ours else float('nan'):>5.1f}x" for x in (base, moshi)]
        lines.append(f"| {name:<36} | {ours:>16.3f} | {base:>17.3f} | {ratio[0]} | {moshi:>11.3f} | {ratio[1]} |")
    lines.append("ratio = baseline / omni (> 1: omni is faster)")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/omni-tiny.yaml", help="an omni (or lm) config")
    p.add_argument("--checkpoint", default=None, help="benchmark a trained omni run/step folder instead")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (the RTF target is for one core)")
    p.add_argument("--turns", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--turn-frames", type=int, default=25, help="input frames per user turn (25 = 2 s)")
    p.add_argument("--reply-frames", type=int, default=25, help="output frames per reply")
    p.add_argument("--baseline-turns", type=int, default=5)
    p.add_argument("--vad", action="store_true", help="run Silero VAD on every input frame too")
    p.add_argument("--no-compile", action="store_true", help="GPU: eager instead of compile=True")
    p.add_argument("--compile", action="store_true", help="CPU: compile=True (inductor; compiling takes minutes)")
    p.add_argument("--out", default="runs/latency.json")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but no GPU is visible")
    torch.set_num_threads(args.threads)
    model, codec, fmt, note = build(args)
    model, codec = model.to(device), codec.to(device)
    args.compile = args.compile or (device.type == "cuda" and not args.no_compile)
    mode = serving_mode(model, device, args.compile)
    args.frame_s = codec.hop_length / codec.sample_rate
    codec_ms = time_codec(codec)
    r: dict[str, Any] = {
        "model": f"{note}, {model.decoder.num_params() / 1e6:.1f}M decoder + {sum(p.numel() for p in model.depth.parameters()) / 1e6:.1f}M depth, K={model.n_codebooks}",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else (platform.processor() or platform.machine()),
        "mode": mode, "threads": args.threads, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
        "turns": args.turns, "turn_frames": args.turn_frames, "reply_frames": args.reply_frames, "frame_s": args.frame_s,
        "vad": args.vad, "codec": codec_ms,
    }
    r["omni"] = time_turns(model, codec, fmt, args, device)
    r["omni"]["step"] = time_step(model, fmt, args, device)
    r["baseline"] = time_baseline(model, codec_ms, args, device)
    r["moshi"] = time_moshi(model, codec_ms, args, device)
    o = r["omni"]
    r["ratios"] = {"ttfa_p50": r["baseline"]["ttfa"]["p50"] / o["ttfa"]["p50"], "step": r["baseline"]["step_ms"] / o["step"]["p50"],
                   "moshi_ttfa_p50": r["moshi"]["ttfa"]["p50"] / o["ttfa"]["p50"], "moshi_step": r["moshi"]["step_ms"] / o["step"]["p50"],
                   "moshi_rtf": r["moshi"]["rtf"] / o["rtf"]}
    print(report(r))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=1))
    print(f"\nwrote {out}")
    return r


if __name__ == "__main__":
    main()
