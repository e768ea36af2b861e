"""Are the demo model's answers right? Every spoken question in unseen voices through the streaming
session, judged by Whisper; captions of unseen crops; drawings of every picture.

    python eval/demo_answers.py --checkpoint runs/demo-omni [--judge base|tiny.en] [--out DIR]
    python eval/demo_answers.py --checkpoint runs/demo-omni --text-only   # the model alone, in seconds
    python eval/demo_answers.py --checkpoint RUN --text-only --voices low-pitch   # choosing between models

``make demo`` ends with this (eval/demo_pipeline.py). Three checks, each beside a trivial baseline
measured in the same run, each written into ``DIR/answers.json``:

1. **Spoken answers.** Every question of data/spoken_qa.jsonl is spoken by its own voice of the
   held-out family (``kokoro-kumo``, data/voices.py: never in a training corpus) and streamed through
   :class:`omni.infer.session.SpeechSession` in batches of concurrent conversations, one codec frame
   per tick; Silero VAD ends each turn. Each reply is what its listener hears: its frames, then the
   codec's held-back end (``speech_end``), cut at ``MAX_REPLY_S``. Whisper (eval/intelligibility.py) transcribes every reply.
   A reply is right when the transcript holds the answer's content words
   (:func:`omni.eval.intelligibility.holds_answer`); the text monologue the model spoke from is scored
   the same way (it measures the model apart from the codec); reply WER is against the answer text.
   Baseline: one fixed answer for every question (the answer that holds the most others). Ceiling:
   the preset voice speaking every expected answer itself, through the codec (encode, decode), judged
   the same way: what a model that answers every question right, in the codec's own speech, scores.
   Questions and replies are written to ``DIR/questions/NN.wav`` and ``DIR/replies/NN.wav``.
   ``--voices`` picks other askers (:data:`VOICE_SETS`): the held-out family is the test, so choose
   between models on new voices of the training families or on Kokoro voices pitched below them.
   ``--text-only`` measures the model apart from the codec's decoder and the judge, quickly: each
   question's reply is generated offline (the tokens the session would draw) and only its
   monologue is scored; no audio is decoded.
2. **Captions of unseen crops.** Each picture of data/build_omni.py's IMAGES, cropped and flipped as
   in training but by a seed no corpus uses (a crop the model never saw), with "Describe the
   image."; right when the reply holds the caption's content words. Baseline: one fixed caption.
3. **Drawings.** "Draw <caption>" for every picture; a drawing is recognisable when, among the
   image tokenizer's reconstructions of all pictures (what the model was trained to draw), the
   nearest to it (mean squared error) is its own. Baseline: chance, 1 / pictures. The drawings and
   their targets are written side by side to ``DIR/drawings.png``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from PIL import Image as PILImage
from tqdm import tqdm

from omni.config import load_config
from omni.conversation import Audio, Message
from omni.data.build_omni import IMAGES, QUICK_JUDGE, augment, clearest_take, load_picture
from omni.data.spoken_qa import load_spoken_qa
from omni.data.voices import UNSEEN_FAMILY, Voice, kokoro_voices, preset_voice, synth_at, training_voices, unseen_voices
from omni.eval.intelligibility import Judge, holds_answer, normalize_text, word_error_rate
from omni.infer.chat import OmniChat
from omni.infer.reply import generate_reply
from omni.infer.session import SpeechSession
from omni.io.audio import save_audio
from omni.tokenizers.image import load_image

Tensor = torch.Tensor

TAIL_S = 1.5  # silence after each question: the VAD's end-of-turn wait and the first reply frames
# Replies are cut at 4 s: the longest answer the corpus speaks is 2.4 s, and a model that does not close
# its reply would otherwise speak for serving.max_reply_frames, every frame through the vocoder.
MAX_REPLY_S = 4.0
CROP_SEED = 424242  # data/build_omni.py seeds its crops with train.seed (1234 in the configs)
MAX_TEXT = 48  # text tokens per caption (an undertrained model may never stop on its own)
# Who asks the spoken questions (--voices): the held-out family is the test; the other two are for
# choosing between models without looking at it (docs/benchmarks.md, "make demo's answers").
VOICE_SETS: dict[str, tuple[str, Callable[[int], list[Voice]]]] = {
    "unseen": (f"unseen voices ({UNSEEN_FAMILY}, held out of training)", unseen_voices),
    "training-families": ("new voices of the training families", lambda n: training_voices(n, seed=777)),
    "low-pitch": ("Kokoro training styles at 0.60-0.72x pitch", lambda n: kokoro_voices(n, 555, pitch=(0.6, 0.72))),
}


@dataclass
class SpokenTurn:
    """One question asked and answered through the session."""

    question: str
    answer: str
    voice: str
    monologue: str  # the text the reply was spoken from
    transcript: str  # what the judge heard in the reply
    right: bool  # transcript holds the answer's content words
    monologue_right: bool
    reply_s: float
    ttfa_ms: float  # the tick that ended the turn (VAD) -> its first reply frame
    wav: str
    voice_stop_s: Optional[float] = None  # reply audio played before the voice guardrail stopped it (None: never)


Heard = tuple[Tensor, str, float, Optional[float]]


def converse(bot: OmniChat, questions: list[Tensor], batch: int = 12) -> tuple[list[Heard], dict[str, float]]:
    """Stream every question [samples at bot.sample_rate] through a SpeechSession with a VAD, ``batch``
    conversations at a time (questions of similar length together). Returns per question (the audio
    its listener heard [samples], the monologue, time to first audio in ms, seconds of reply audio
    played before the voice guardrail stopped it or None) and the session's
    real-time factor (seconds per second of ticks: below 1, all ``batch`` conversations keep up)."""
    order = sorted(range(len(questions)), key=lambda i: len(questions[i]))
    results: list[Optional[Heard]] = [None] * len(questions)
    busy = audio_s = 0.0
    for start in tqdm(range(0, len(order), batch), desc="spoken questions (batches)", disable=None):
        rows = order[start : start + batch]
        replies, b_busy, b_audio = _batch(bot, [questions[i] for i in rows])
        busy, audio_s = busy + b_busy, audio_s + b_audio
        for i, r in zip(rows, replies):
            results[i] = r
    return results, {"rtf": busy / max(audio_s, 1e-9), "batch": float(batch)}  # type: ignore[return-value]


def _batch(bot: OmniChat, questions: list[Tensor]) -> tuple[list[Heard], float, float]:
    """One session of len(questions) rows, each its question then TAIL_S of silence."""
    sr, B = bot.sample_rate, len(questions)
    hop = bot.codec.hop_length
    length = max(len(q) for q in questions) + int(TAIL_S * sr)
    wav = torch.zeros(B, 1, -(-length // hop) * hop)
    for b, q in enumerate(questions):
        wav[b, 0, : len(q)] = q
    heard: list[list[Tensor]] = [[] for _ in range(B)]
    ttfa: list[Optional[float]] = [None] * B
    stop: list[Optional[float]] = [None] * B
    busy, ticks = 0.0, 0

    def take(outs, seconds: float) -> None:
        for o in outs:
            for b in range(B):
                if (b, "turn_end") in o.events:
                    ttfa[b] = seconds * 1000  # the frame that ended the turn -> the reply's first frame
                if (b, "voice_stop") in o.events:
                    stop[b] = sum(len(x) for x in heard[b]) / sr
                if o.speaking[b]:
                    heard[b].append(o.audio[b, 0])
                if (b, "speech_end") in o.events:
                    heard[b].append(o.tail[b, 0])

    frames = min(bot.serving.max_reply_frames, math.ceil(MAX_REPLY_S * bot.codec.frame_rate))
    with bot.session(B, vad=True, serving=dataclasses.replace(bot.serving, max_reply_frames=frames)) as s:
        for i in range(0, wav.shape[-1], hop):
            t = time.perf_counter()
            outs = list(s.feed(wav[..., i : i + hop]))
            busy += time.perf_counter() - t
            ticks += len(outs)
            take(outs, time.perf_counter() - t)
        unheard = torch.tensor([t is None for t in ttfa])
        if bool(unheard.any()):  # the VAD heard no end of turn in these rows: end them explicitly
            t = time.perf_counter()
            outs = list(s.feed(torch.zeros(B, 1, 0), end_turn=unheard))
            busy += time.perf_counter() - t
            ticks += len(outs)
            take(outs, time.perf_counter() - t)
        replies = s.reply()
        while True:
            t = time.perf_counter()
            o = next(replies, None)
            if o is None:
                break
            busy += time.perf_counter() - t
            ticks += 1
            take([o], time.perf_counter() - t)
        monologues = [_spoken(s, b) for b in range(B)]
    audio = [torch.cat(h) if h else torch.zeros(0) for h in heard]
    return ([(a, m, t or 0.0, s) for a, m, t, s in zip(audio, monologues, ttfa, stop)], busy, ticks * hop / sr)


def _spoken(session: SpeechSession, row: int) -> str:
    said = [p for m in session.history(row) if m.role == "assistant" for p in m.content if isinstance(p, Audio)]
    return said[-1].text if said else ""


def _percent(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def monologues_offline(bot: OmniChat, questions: list[Tensor]) -> list[str]:
    """The text each spoken question's reply would be spoken from, generated offline (greedy, as the
    session samples) without decoding any audio."""
    said = []
    for q in tqdm(questions, desc="monologues (offline)", disable=None):
        codes = bot.codec.encode(bot.codec.pad_to_hop(q.view(1, 1, -1)).to(bot.device))[0].cpu()
        reply = generate_reply(bot.model, bot.fmt, [Message("user", Audio(codes))], reply_in_speech=True,
                               max_new_tokens=bot.serving.max_reply_frames)
        said.append(" ".join(p.text for p in reply.parts if isinstance(p, Audio)).strip())
    return said


def preset_voice_ceiling(bot: OmniChat, judge: Judge, answers: list[str]) -> dict[str, float]:
    """The expected ``answers`` in the preset voice as a training corpus keeps them (data/build_omni.py's
    :func:`clearest_take`, chosen by the quick judge), decoded from their codes and judged by ``judge``:
    accuracy and WER. A model that says its answers exactly as it learnt them scores this."""
    quick = Judge(QUICK_JUDGE, threads=judge.threads)
    with torch.no_grad():
        spoken = [clearest_take(bot.codec, preset_voice(), a, quick).wave
                  for a in tqdm(answers, desc="the preset voice's takes", disable=None)]
    heard = judge.transcribe_many(spoken, bot.sample_rate, desc="judging the preset voice")
    return {"accuracy": sum(holds_answer(a, h) for a, h in zip(answers, heard)) / len(answers),
            "wer": word_error_rate(answers, heard)}


def fixed_answer_baseline(answers: list[str]) -> tuple[str, int]:
    """The best constant reply: the answer that holds the most answers' content words, and how many."""
    return max(((f, sum(holds_answer(a, f) for a in answers)) for f in answers), key=lambda x: x[1])


def ask_every_question(bot: OmniChat, judge: Optional[Judge], out: Path, batch: int = 12,
                       limit: Optional[int] = None, voice_set: str = "unseen") -> dict[str, Any]:
    """Check 1 of the module docstring; prints each turn and the summary; returns the JSON-able result.
    ``judge`` None: text only (offline monologues, no audio, no session); ``voice_set``: a key of
    :data:`VOICE_SETS`."""
    qa = [(x.question, x.answer) for x in load_spoken_qa()[:limit]]
    who, make_voices = VOICE_SETS[voice_set]
    voices = make_voices(len(qa))
    t0 = time.perf_counter()
    questions = [synth_at(v, q, bot.sample_rate) for v, (q, _) in tqdm(list(zip(voices, qa)), desc="speaking the questions", disable=None)]
    seconds = {"speaking the questions": time.perf_counter() - t0}
    answers = [a for _, a in qa]
    fixed, fixed_right = fixed_answer_baseline(answers)
    t0 = time.perf_counter()
    if judge is None:
        said = monologues_offline(bot, questions)
        seconds["offline replies"] = time.perf_counter() - t0
        rows = [{"question": q, "answer": a, "voice": v.name, "monologue": m, "monologue_right": holds_answer(a, m)}
                for (q, a), v, m in zip(qa, voices, said)]
        for n, r in enumerate(rows, 1):
            print(f"   {n:2d}. {r['question']!r} -> expected {r['answer']!r}\n"
                  f"       text {'+' if r['monologue_right'] else '-'} {r['monologue']!r}")
        right = sum(r["monologue_right"] for r in rows)
        print(f"== spoken questions, text only: {len(rows)} questions in {who}; the text "
              f"monologue holds the answer's content words in {right}/{len(rows)} = {100 * right / len(rows):.1f} %; "
              f"baseline, one fixed answer ({fixed!r}): {fixed_right}/{len(rows)}")
        summary = {"questions": len(rows), "voices": who, "judge": None,
                   "monologue_accuracy": right / len(rows), "seconds": seconds,
                   "baseline_fixed_answer": {"answer": fixed, "accuracy": fixed_right / len(rows)}}
        return {"summary": summary, "turns": rows}
    replies, stats = converse(bot, questions, batch)
    seconds["session"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    transcripts = judge.transcribe_many([r[0] for r in replies], bot.sample_rate, desc="judging the replies")
    seconds["judge"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ceiling = preset_voice_ceiling(bot, judge, answers)
    seconds["ceiling"] = time.perf_counter() - t0
    turns = []
    for n, ((q, a), v, (wav, said, ttfa, stop), heard) in enumerate(zip(qa, voices, replies, transcripts)):
        save_audio(out / "questions" / f"{n:02d}.wav", questions[n][None], bot.sample_rate)
        path = out / "replies" / f"{n:02d}.wav"
        save_audio(path, wav[None], bot.sample_rate)
        turns.append(SpokenTurn(q, a, v.name, said, heard, holds_answer(a, heard), holds_answer(a, said),
                                len(wav) / bot.sample_rate, ttfa, str(path), stop))
    right, said_right = sum(t.right for t in turns), sum(t.monologue_right for t in turns)
    ttfas = sorted(t.ttfa_ms for t in turns)
    summary = {
        "questions": len(turns), "voices": who, "judge": f"Whisper {judge.name}",
        "accuracy": right / len(turns), "monologue_accuracy": said_right / len(turns),
        "reply_wer": word_error_rate(answers, transcripts),
        # Speech apart from recognition: does the reply say the text it was spoken from? (None: no monologue had words)
        "reply_wer_vs_monologue": (word_error_rate([t.monologue for t in turns], transcripts)
                                   if any(normalize_text(t.monologue) for t in turns) else None),
        "baseline_fixed_answer": {"answer": fixed, "accuracy": fixed_right / len(turns)},
        "ceiling_preset_voice_through_codec": ceiling,
        "ttfa_ms_p50": ttfas[len(ttfas) // 2], "session_rtf": stats["rtf"], "batch": int(stats["batch"]),
        # every reply is meant to be in the preset voice: each stop is a false stop of the guardrail
        "voice_stops": sum(t.voice_stop_s is not None for t in turns),
        "seconds": seconds,
        "codec": {k: v for k, v in bot.codec.metadata.items() if isinstance(v, (int, float, str))},
    }
    for n, t in enumerate(turns, 1):
        print(f"   {n:2d}. {t.question!r} -> expected {t.answer!r}\n"
              f"       text {'+' if t.monologue_right else '-'} {t.monologue!r}\n"
              f"       said {'+' if t.right else '-'} {t.transcript!r}"
              + (f" (voice guardrail stop after {t.voice_stop_s:.2f} s)" if t.voice_stop_s is not None else ""))
    print(f"== spoken answers: {len(turns)} questions in {who}, streamed {summary['batch']} "
          f"conversations at a time, replies judged by Whisper {judge.name}:\n"
          f"   accuracy {right}/{len(turns)} = {100 * summary['accuracy']:.1f} % (the judge's transcript holds the "
          f"answer's content words); text monologue {said_right}/{len(turns)} = {100 * summary['monologue_accuracy']:.1f} %; "
          f"baseline, one fixed answer ({fixed!r}): {fixed_right}/{len(turns)}; ceiling, the preset voice speaking "
          f"the answers through the codec (the takes a corpus keeps): {round(ceiling['accuracy'] * len(turns))}/{len(turns)} (WER "
          f"{100 * ceiling['wer']:.1f} %)\n"
          f"   reply WER against the answer text {100 * summary['reply_wer']:.1f} %, against the monologue it was "
          f"spoken from {_percent(summary['reply_wer_vs_monologue'])}; time to first audio p50 "
          f"{summary['ttfa_ms_p50']:.0f} ms after the frame that ended the turn (VAD waited "
          f"{bot.serving.end_of_turn_ms} ms of silence first); session real-time factor {stats['rtf']:.2f} with "
          f"{summary['batch']} conversations per tick; {seconds['session']:.0f} s session, {seconds['judge']:.0f} s judge\n"
          f"   voice guardrail stopped {summary['voice_stops']}/{len(turns)} replies (all meant in the preset voice)")
    return {"summary": summary, "turns": [asdict(t) for t in turns]}


def caption_unseen_crops(bot: OmniChat) -> dict[str, Any]:
    """Check 2 of the module docstring."""
    rng = random.Random(CROP_SEED)
    rows = []
    for name, caption in IMAGES:
        crop = augment(load_picture(name), rng)
        reply = bot.chat([{"role": "user", "content": [{"type": "image", "image": crop},
                                                       {"type": "text", "text": "Describe the image."}]}],
                         max_new_tokens=MAX_TEXT)
        rows.append({"picture": name, "caption": caption, "reply": reply.text, "right": holds_answer(caption, reply.text)})
    captions = [c for _, c in IMAGES]
    fixed, fixed_right = fixed_answer_baseline(captions)
    right = sum(r["right"] for r in rows)
    for r in rows:
        print(f"   {'+' if r['right'] else '-'} {r['picture']}: {r['reply']!r} (trained caption {r['caption']!r})")
    print(f"== captions of unseen crops: {right}/{len(rows)} name the right picture; baseline, one fixed caption: "
          f"{fixed_right}/{len(rows)}")
    return {"summary": {"pictures": len(rows), "accuracy": right / len(rows), "baseline_fixed_caption": fixed_right / len(rows)},
            "captions": rows}


def draw_every_picture(bot: OmniChat, out: Path) -> dict[str, Any]:
    """Check 3 of the module docstring."""
    tok = bot.image_tok
    size = int(tok.metadata["image_size"])
    grid = bot.fmt.vocab.image_grid
    with torch.no_grad():
        pixels = torch.stack([load_image(load_picture(n), size) for n, _ in IMAGES]).to(bot.device)
        targets = tok.decode(tok.encode(pixels)).clamp(0, 1).cpu()  # what the model was trained to draw
    drawings, rows = [], []
    for i, (name, caption) in enumerate(IMAGES):
        reply = bot.chat([{"role": "user", "content": f"Draw {caption}"}], reply_in_speech=False,
                         max_new_tokens=MAX_TEXT + grid[0] * grid[1])
        if reply.images:
            img = reply.images[0].clamp(0, 1)
            nearest = int(((targets - img[None]) ** 2).flatten(1).mean(1).argmin())
            psnr = float(-10 * torch.log10(((targets[i] - img) ** 2).mean().clamp(min=1e-10)))
        else:
            img, nearest, psnr = torch.zeros_like(targets[i]), -1, float("nan")
        drawings.append(img)
        rows.append({"picture": name, "caption": caption, "drew": bool(reply.images), "nearest": IMAGES[nearest][0] if nearest >= 0 else None,
                     "right": nearest == i, "psnr_db": psnr, "text": reply.text})
    sheet = torch.cat([torch.cat(drawings, 2), torch.cat(list(targets), 2)], 1)  # drawings above, targets below
    PILImage.fromarray((sheet.permute(1, 2, 0) * 255).round().byte().numpy()).save(out / "drawings.png")
    right = sum(r["right"] for r in rows)
    print(f"== drawings: {right}/{len(rows)} are nearest to their own picture among the {len(rows)} (chance 1/{len(rows)}); "
          f"PSNR to the target {sum(r['psnr_db'] for r in rows if r['drew']) / max(1, sum(r['drew'] for r in rows)):.1f} dB "
          f"on average; drawings above their targets: {out / 'drawings.png'}")
    return {"summary": {"pictures": len(rows), "recognisable": right / len(rows), "chance": 1 / len(rows)}, "drawings": rows}


def evaluate(bot: OmniChat, out: Path, judge: Optional[Judge], batch: int = 12, limit: Optional[int] = None,
             voice_set: str = "unseen") -> dict[str, Any]:
    """All three checks (spoken answers judged by ``judge``, None: text only; ``limit``: the first N
    questions only; ``voice_set``: who asks them, a key of :data:`VOICE_SETS`); writes ``out/answers.json``
    and returns it."""
    out.mkdir(parents=True, exist_ok=True)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": _commit()}
    result["images"] = caption_unseen_crops(bot)
    result["drawings"] = draw_every_picture(bot, out)
    result["spoken"] = ask_every_question(bot, judge, out, batch, limit, voice_set)
    (out / "answers.json").write_text(json.dumps(result, indent=1))
    print(f"   all answers: {out / 'answers.json'}")
    return result


def _commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="runs/demo-omni", help="an omni run or step folder")
    p.add_argument("--judge", default="base", choices=("base", "tiny.en"), help="Whisper model (tiny.en: quicker, less exact)")
    p.add_argument("--batch", type=int, default=12, help="concurrent conversations per session")
    p.add_argument("--limit", type=int, default=None, help="ask only the first N questions (quick checks)")
    p.add_argument("--text-only", action="store_true", help="score the offline monologues only: no audio, no judge")
    p.add_argument("--voices", default="unseen", choices=tuple(VOICE_SETS),
                   help="who asks the spoken questions: unseen (the test), or a set for choosing between models")
    p.add_argument("--out", default=None, help="output folder (default: the checkpoint's run folder / answers)")
    args = p.parse_args(argv)
    bot = OmniChat.load(args.checkpoint, serving=load_config("configs/omni-tiny.yaml").serving)
    evaluate(bot, Path(args.out or Path(args.checkpoint) / "answers"), None if args.text_only else Judge(args.judge),
             args.batch, args.limit, args.voices)


if __name__ == "__main__":
    main()
