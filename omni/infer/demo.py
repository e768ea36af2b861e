"""The omni part of ``make demo`` (omni/demo.py calls :func:`run_omni_demo`).

Builds the omni-tiny demo corpus if missing, trains the omni model from scratch for a few minutes on
the CPU with the one Trainer, then serves it: one spoken question streamed in 80 ms chunks (Silero
VAD ends the turn, frames are decoded and written as they come), one image question and one drawing.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from omni.config import Config

CONFIG = "configs/omni-tiny.yaml"
DEMO_OVERRIDES = ["train.batch_size=4", "train.warmup_steps=20", "train.log_every=20", "train.ckpt_every=1000"]
DEMO_STEPS = 150  # at most; fewer when this machine is slower than TRAIN_BUDGET_S allows
TRAIN_BUDGET_S = 300.0
MAX_TEXT = 48  # text tokens per demo answer (an undertrained model may never stop on its own)


def spoken_question(text: str, sample_rate: int) -> torch.Tensor:
    """``text`` spoken by a user voice (not the assistant's), [samples] at ``sample_rate``."""
    from omni.data.audio import resample
    from omni.data.build_speech import Espeak, Speaker

    es = Espeak()
    pcm = es.synth(text, Speaker("en-gb-scotland", "m3", 160, 40, 50))
    return resample(torch.from_numpy(pcm.astype(np.float32) / 32768.0)[None], es.sample_rate, sample_rate)[0]


def streamed_turn(bot, question: torch.Tensor, out: Path, chunk_ms: int = 80, tail_s: float = 1.5) -> str:
    """Stream ``question`` (then ``tail_s`` of silence) in ``chunk_ms`` chunks through a VAD session;
    write reply.wav; return the latency line."""
    from omni.data.audio import save_audio

    sr = bot.sample_rate
    step = sr * chunk_ms // 1000
    audio = torch.cat([question, torch.zeros(int(tail_s * sr))])
    frames, ticks, busy, ttfa = [], 0, 0.0, None
    with bot.session(1, vad=True) as s:
        for i in range(0, len(audio), step):
            t = time.perf_counter()
            outs = list(s.feed(audio[i : i + step].view(1, 1, -1)))
            busy += time.perf_counter() - t
            ticks += len(outs)
            for o in outs:
                if any(name == "turn_end" for _, name in o.events) and ttfa is None:
                    ttfa = (time.perf_counter() - t) * 1000  # the chunk that ended the turn -> its first frame
                frames += [o.audio[0, 0]] if o.speaking[0] else []
        if ttfa is None:  # VAD heard no end of turn (e.g. noise): end it explicitly
            t = time.perf_counter()
            outs = list(s.feed(torch.zeros(1, 1, 0), end_turn=True))
            ttfa = (time.perf_counter() - t) * 1000
            frames += [o.audio[0, 0] for o in outs if o.speaking[0]]
        replies = s.reply()
        while True:  # the rest of the reply, one tick (80 ms of silent input) at a time
            t = time.perf_counter()
            o = next(replies, None)
            if o is None:
                break
            busy += time.perf_counter() - t
            ticks += 1
            frames += [o.audio[0, 0]] if o.speaking[0] else []
        history = s.history(0)
    from omni.conversation import Audio

    said = [p for m in history if m.role == "assistant" for p in m.content if isinstance(p, Audio)]
    spoken = said[-1].text if said else ""
    wav = torch.cat(frames) if frames else torch.zeros(0)
    save_audio(out / "reply.wav", wav[None], sr)
    rtf = busy / max(1e-9, ticks * bot.codec.hop_length / sr)
    return (f"reply {len(wav) / sr:.2f} s of speech ({out / 'reply.wav'}), monologue {spoken!r}\n"
            f"   latency: time to first audio {ttfa:.0f} ms after the chunk that ended the turn (VAD waited "
            f"{bot.ocfg.end_of_turn_ms} ms of silence first); real-time factor {rtf:.2f} over {ticks} frames "
            f"in and out ({torch.get_num_threads()} CPU thread)")


def budget_steps(cfg: Config) -> int:
    """Training steps that fit TRAIN_BUDGET_S on this machine (two timed steps), at most DEMO_STEPS."""
    from omni.train.task import get_task

    task = get_task("omni")
    model, data = task.build_model(cfg), task.build_dataset(cfg)
    batch = task.collate([data[i % len(data)] for i in range(cfg.train.batch_size)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for _ in range(2):  # the first step warms up allocators
        t = time.perf_counter()
        loss, _ = task.loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    steps = int(max(20, min(DEMO_STEPS, TRAIN_BUDGET_S / times[-1])))
    print(f"   {times[-1]:.2f} s per step here: {steps} steps fit the {TRAIN_BUDGET_S:.0f} s training budget")
    return steps


def run_omni_demo(out: str = "runs/demo-omni", steps: Optional[int] = None, scale: float = 0.35) -> None:
    """Corpus (if missing) -> train -> spoken turn + image question + drawing (see module docstring)."""
    from omni.config import load_config
    from omni.data.build_omni import IMAGES, SPOKEN_QA, build_omni_corpus, load_picture
    from omni.omni_task import read_index, register_config_sections
    from omni.train.task import get_task
    from omni.train.trainer import Trainer

    register_config_sections()
    cfg = load_config(CONFIG, [*DEMO_OVERRIDES, f"train.out_dir={out}"])
    t0 = time.perf_counter()
    try:
        read_index(cfg.data.path)
        print(f"== omni corpus: {cfg.data.path} (exists)")
    except (FileNotFoundError, ValueError):
        print(f"== building the omni demo corpus -> {cfg.data.path}")
        build_omni_corpus(cfg, scale=scale)
    tasks = read_index(cfg.data.path)["tasks"]
    print(f"   conversations per task: {json.dumps(tasks)} ({time.perf_counter() - t0:.0f} s)")

    cfg.train.steps = steps or budget_steps(cfg)
    t0 = time.perf_counter()
    print(f"== training {cfg.name} ({cfg.train.steps} steps x {cfg.train.batch_size} rows of {cfg.data.seq_len}) into {out}")
    Trainer(cfg, get_task("omni"), argparse.Namespace(deepspeed=None, fsdp=False, resume=None, overwrite=True)).fit()
    records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    print(f"   loss {records[0]['loss']:.2f} -> {last['loss']:.2f}; text {last['loss_text']:.2f}, monologue "
          f"{last['loss_monologue']:.2f}, audio codes {last['loss_audio']:.2f}, image {last['loss_image']:.2f} "
          f"({time.perf_counter() - t0:.0f} s)")

    from omni.chat import OmniChat

    bot = OmniChat.load(out)
    out_dir = Path(out)
    torch.set_num_threads(1)  # serving a tiny model: one core (the real-time target) is also the fastest
    question, answer = SPOKEN_QA[0]
    print(f"== spoken question {question!r} (a user voice; trained answer {answer!r} in the assistant voice)")
    print("   " + streamed_turn(bot, spoken_question(question, bot.sample_rate), out_dir))

    name, caption = next((n, c) for n, c in IMAGES if n.endswith("chelsea"))
    reply = bot.chat([{"role": "user", "content": [{"type": "image", "image": load_picture(name)},
                                                   {"type": "text", "text": "Describe the image."}]}], max_new_tokens=MAX_TEXT)
    print(f"== image question (a cat photo; trained caption {caption!r}): {reply.text!r}")
    drawing = bot.chat([{"role": "user", "content": f"Draw {caption}"}], reply_in_speech=False,
                       max_new_tokens=MAX_TEXT + bot.fmt.vocab.image_grid[0] * bot.fmt.vocab.image_grid[1])
    if drawing.images:
        from PIL import Image as PILImage

        PILImage.fromarray((drawing.images[0].permute(1, 2, 0) * 255).round().byte().numpy()).save(out_dir / "drawn.png")
        print(f"== drawing ({caption!r}): {out_dir / 'drawn.png'}")
    else:
        print(f"== drawing ({caption!r}): the model answered in text instead: {drawing.text!r}")
    print(f"== try it: python -m omni.chat --checkpoint {out} --audio {out_dir / 'reply.wav'} --out {out_dir / 'chat'}")
