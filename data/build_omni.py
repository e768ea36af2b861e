"""Build the multi-task omni demo corpus offline: every sample a conversation, tokenized and packed.

Tasks (one conversation each; DESIGN.md §7 sources, nothing downloaded from a hub):

* ``text``     — text questions, text answers (data/build_text.py's correct-by-construction pairs);
* ``asr``      — "Transcribe this." + speech in a random voice -> the text;
* ``tts``      — "Say: ..." -> speech in the assistant voice (inner monologue = the text);
* ``s2s``      — a spoken question in one of many synthetic voices -> a spoken answer in the one
  fixed assistant voice (monologue = the answer); the same questions also appear as text -> text;
* ``safety``   — the same, for the ``train`` rows of data/speech_safety.jsonl (GPT-4o system-card
  behaviours: refuse to identify a speaker or infer ungrounded traits from a voice sample, hedge on
  accents, answer who said a famous line, the RBR prompts' ideal replies); questions about a speaker
  follow a voice sample (another training voice saying a neutral line) in the same user turn;
  the rows without a sample also appear as text -> text;
* ``caption``  — an image (scikit-image / scikit-learn bundled pictures, randomly cropped and
  flipped) + "Describe the image." -> its caption;
* ``draw``     — "Draw ..." + caption -> the image's codes (text -> image);
* ``video``    — a synthetic clip (a coloured shape moving over a bundled picture) + "What happens in
  the video?" -> its description.

The spoken questions and answers come from data/spoken_qa.jsonl and data/speech_safety.jsonl
(its ``test`` rows are never used: eval/system_card.py asks them). Speech is synthesised by
data/voices.py: user turns in the training voice families (espeak-ng speakers, Kokoro styles and
blends; never the unseen family the demo asks in), assistant turns in the one preset voice (Piper
en_US-joe-medium). Everything is encoded by
the frozen tokenizers named in the config (``tokenizer`` + ``omni.codec`` / ``omni.image_tokenizer`` /
``omni.video_tokenizer``: tokenizer folders or the run folders of their training). A missing
sentencepiece model is trained on the corpus text; a missing codec / image / video tokenizer is an
error that says how to train it (``make demo`` trains all three first). Only ``--untrained`` (tests,
wiring checks) builds with *untrained* tokenizers instead (seeded random weights, the config's
``codec`` / ``image_tok`` / ``video_tok`` shapes): speech and pictures then decode to noise. The
tokenizers used are saved with the corpus (``data.path/tokenizers/``), since their codes are in it.

    python data/build_omni.py --config configs/omni-tiny.yaml          # -> data.path (tar shards, docs/data.md)
    python data/build_omni.py --config configs/omni-tiny.yaml --untrained --scale 0.05   # wiring only

Your own corpora (data/sources/: LibriSpeech, LibriTTS, VCTK, LJSpeech, Common Voice, COCO, image /
video folders) go to streamed tar shards instead (data/shards.py, docs/data.md)::

    python data/build_omni.py --config configs/omni-tiny.yaml --source librispeech=/data/LibriSpeech \
        --source coco=/data/coco --shards out/ [--mix data/omni-mix.yaml] [--workers 4]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Optional

import numpy as np
import torch
from PIL import Image as PILImage
from tqdm import tqdm

# The `dev` extra's bundled pictures: without them, load_picture raises ImportError naming the package.
try:
    import skimage.data
except ImportError:
    skimage = None
try:
    from sklearn.datasets import load_sample_image
except ImportError:
    load_sample_image = None

from omni.config import Config, load_config
from omni.conversation import Audio, ConversationFormat, Image, Message, OmniVocab, Stream, Text, Video
from omni.data.build_text import instruction_pairs
from omni.data.shards import TarShardWriter, build_shards
from omni.data.sources import SOURCES
from omni.data.spoken_qa import SAFETY_FILE, SAMPLE_LINES, SpokenQA, load_spoken_qa
from omni.data.voices import Voice, accent_of, preset_voice, synth_at, training_voices
from omni.eval.intelligibility import Judge, holds_answer, word_error_rate
from omni.tokenizers.base import Tokenizer, load_tokenizer
from omni.tokenizers.codec import SpeechCodec
from omni.tokenizers.image import ImageTokenizer, load_image
from omni.tokenizers.text import SentencePieceTokenizer, build_text_tokenizer
from omni.tokenizers.video import VideoTokenizer
from omni.train.checkpoint import CheckpointError, resolve_checkpoint
from omni.train.shards import FORMAT

VAL_EVERY = 40
# Conversations per task at scale 1: text, speech, image, video, speech safety. The demo is judged on
# spoken answers in unseen voices and on captions of unseen crops, so most of the corpus goes there:
# each spoken question is asked in ~45 voices. With ~6 a small model memorises the utterances (it
# answers those it trained on and no others); only many speakers make it recognise the question.
COUNTS = (250, 6000, 420, 120, 240)
# Distinct training voices the questions are spoken in (data/voices.py: Kokoro styles and blends,
# espeak-ng speakers), drawn at random per utterance.
TRAINING_VOICES = 512
# Times the spoken questions also appear as text questions: the answers are learnt fastest from text,
# and a spoken question then only has to be recognised.
QA_TEXT_REPEATS = 6
# Share of the speech conversations that ask a spoken question (s2s); each of those utterances is also
# transcribed (asr, as many again); the rest are "Say: ..." (tts).
ASKED_SHARE = 0.45
# Share of the image conversations that caption a random crop; the rest draw a picture.
CAPTION_SHARE = 2 / 3

# Takes of each assistant line. Piper samples noise inside its graph, so takes of one line differ, and
# through the codec some lose a word; the model learns to say each line exactly as its one take in the
# corpus does. Of the takes the quick judge hears best through the codec, the one it is surest of is
# kept; a line no take says word for word gets more takes (clearest_take; docs/benchmarks.md,
# "Clearer assistant takes" and the stages after it).
ASSISTANT_TAKES = 6
MAX_ASSISTANT_TAKES = 16
QUICK_JUDGE = "tiny.en"  # not the demo's judge (base), so the demo does not score what it selected on

# The demo's spoken questions and answers live in data/spoken_qa.jsonl (omni.data.spoken_qa).
EXTRA_TTS_LINES = ["Good morning.", "Thank you very much.", "See you tomorrow.", "The weather is nice today.",
                   "I like green apples."]

# (loader, caption): pictures bundled with scikit-image / scikit-learn.
IMAGES = [
    ("skimage:astronaut", "an astronaut in a white spacesuit next to a flag."),
    ("skimage:camera", "a black and white photo of a man with a camera."),
    ("skimage:chelsea", "an orange cat looking to the side."),
    ("skimage:coffee", "a cup of coffee on a saucer."),
    ("skimage:coins", "old coins on a dark background."),
    ("skimage:rocket", "a rocket on its launch pad."),
    ("skimage:hubble_deep_field", "many small galaxies in deep space."),
    ("skimage:moon", "the grey surface of the moon."),
    ("skimage:brick", "a grey brick wall."),
    ("skimage:grass", "green grass seen from above."),
    ("skimage:clock", "a clock on a wall."),
    ("skimage:colorwheel", "a colour wheel with every hue."),
    ("sklearn:china.jpg", "a temple with a red roof among trees."),
    ("sklearn:flower.jpg", "a pink flower in close up."),
]
SHAPES = {"red": (1.0, 0.1, 0.1), "green": (0.1, 0.9, 0.1), "blue": (0.1, 0.2, 1.0), "yellow": (1.0, 0.9, 0.1)}
MOTIONS = ("left to right", "right to left", "top to bottom", "bottom to top")


# ---- sources ---------------------------------------------------------------------------------------
def load_picture(name: str) -> "Any":
    """A bundled picture as a PIL RGB image (``skimage:NAME`` or ``sklearn:FILE``)."""
    kind, key = name.split(":", 1)
    if kind == "skimage":
        if skimage is None:
            raise ImportError(f"picture {name} needs `pip install scikit-image` (the `dev` extra)")
        arr = np.asarray(getattr(skimage.data, key)())
    else:
        if load_sample_image is None:
            raise ImportError(f"picture {name} needs `pip install scikit-learn` (the `dev` extra)")
        arr = load_sample_image(key)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, -1)
    return PILImage.fromarray(arr[..., :3].astype(np.uint8))


def augment(img: "Any", rng: random.Random) -> "Any":
    """A random crop (70-100% of the shorter side) and a random horizontal flip."""
    w, h = img.size
    side = int(min(w, h) * rng.uniform(0.7, 1.0))
    left, top = rng.randint(0, w - side), rng.randint(0, h - side)
    img = img.crop((left, top, left + side, top + side))
    return img.transpose(PILImage.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img


def synthetic_clip(background: torch.Tensor, colour: str, motion: str, frames: int, rng: random.Random) -> torch.Tensor:
    """A [T, 3, H, W] clip: a coloured square moving ``motion`` over ``background`` [3, H, W]."""
    _, H, W = background.shape
    size = max(4, H // 4)
    clip = background[None].repeat(frames, 1, 1, 1).clone()
    lane = rng.randint(0, H - size)
    for t in range(frames):
        f = t / max(1, frames - 1)
        pos = int(f * (W - size))
        x, y = {"left to right": (pos, lane), "right to left": (W - size - pos, lane),
                "top to bottom": (lane, int(f * (H - size))), "bottom to top": (lane, H - size - int(f * (H - size)))}[motion]
        clip[t, :, y : y + size, x : x + size] = torch.tensor(SHAPES[colour])[:, None, None]
    return clip


# ---- tokenizers ------------------------------------------------------------------------------------
def tokenizer_folder(path: str) -> Optional[Path]:
    """The tokenizer folder ``path`` names: a folder written by Tokenizer.save, or a training run /
    step folder of the codec, image or video task (its checkpoint's ``tokenizer/``). None if neither."""
    if (Path(path) / "tokenizer.json").is_file():
        return Path(path)
    try:
        folder = resolve_checkpoint(path) / "tokenizer"
    except CheckpointError:
        return None
    return folder if (folder / "tokenizer.json").is_file() else None


def frozen_tokenizers(cfg: Config, out: Path, untrained: bool = False) -> tuple[dict[str, Tokenizer], dict[str, str]]:
    """codec, image and video tokenizers of ``cfg``: the trained ones the config names, or with
    ``untrained=True`` seeded random ones of the config's shapes (for tests: their codes are noise).
    Each is saved into ``out/tokenizers/NAME`` so the corpus keeps the exact tokenizers its codes came
    from (a training run may rotate its checkpoints away). Returns the tokenizers and where each came
    from (a folder, or "untrained")."""
    o = cfg.section("omni")
    wanted = {
        "codec": (o.codec, lambda: SpeechCodec(cfg.section("codec")), "omni.codec"),
        "image": (o.image_tokenizer, lambda: ImageTokenizer(cfg.section("image_tok")), "omni.image_tokenizer"),
        "video": (o.video_tokenizer, lambda: VideoTokenizer(cfg.section("video_tok")), "omni.video_tokenizer"),
    }
    toks, sources = {}, {}
    for name, (path, create, key) in wanted.items():
        if untrained:
            torch.manual_seed(0)
            toks[name], sources[name] = create(), "untrained"
        else:
            folder = tokenizer_folder(path)
            if folder is None:
                raise FileNotFoundError(
                    f"{key}={path} holds no trained {name} tokenizer (a tokenizer folder, or a training run with a "
                    f"complete checkpoint). Train one (docs/tokenizers.md: python train.py --config "
                    f"configs/{name}-tiny.yaml) and name it with {key}=RUN, or run `python -m omni.demo --only omni`, "
                    "which trains all three and builds the corpus from them.")
            toks[name], sources[name] = load_tokenizer(folder), str(folder)
        toks[name].save(out / "tokenizers" / name)
        toks[name].eval()
    return toks, sources


# ---- conversations ---------------------------------------------------------------------------------
class Take(NamedTuple):
    """One synthesis of a line, through the codec: its ``codes`` [K, frames], the ``wave`` [samples at
    the codec's rate] they decode to, which ``take`` of :func:`omni.data.voices.synth_at` it is, what
    the judge ``heard`` in ``wave``, whether that ``holds`` the line's content words, its word error
    rate against the line (``wer``, 0 = word for word) and the judge's mean log-probability per token
    of it (``logprob``)."""

    codes: torch.Tensor
    wave: torch.Tensor
    take: int
    heard: str
    holds: bool
    wer: float
    logprob: float

    @property
    def rank(self) -> tuple[bool, float, float]:
        """Lower is clearer: content words held, then WER, then the judge's certainty."""
        return (not self.holds, self.wer, -self.logprob)


def clearest_take(codec: SpeechCodec, voice: Voice, text: str, judge: Judge, takes: int = ASSISTANT_TAKES,
                  max_takes: int = MAX_ASSISTANT_TAKES, trailing: int = 0) -> Take:
    """``text`` in ``voice`` as the corpus keeps it. Takes 0, 1, ... are synthesised and their codec
    reconstructions (codes -> log-mel -> vocoder) judged by ``judge``: ``takes`` of them, then more, up
    to ``max_takes``, while none holds the line word for word. Kept is the take whose transcript holds
    the line's content words (:func:`omni.eval.intelligibility.holds_answer`, the demo's criterion),
    then has the lowest WER, then the one the judge is surest of (highest mean log-probability,
    :meth:`Judge.hear`; the earlier on full ties). The model learns to say its corpus's take,
    approximately: a take heard right by a margin stays right in the model's rendering more often
    than one heard right by a hair. Each take is followed by ``trailing`` samples of silence before
    encoding. Only a voice that samples noise (Piper) says a line differently from take to take; for
    the others every take is the same. Raises ValueError for ``takes`` < 1 or ``max_takes`` < ``takes``."""
    if not 1 <= takes <= max_takes:
        raise ValueError(f"takes must be >= 1 and max_takes >= takes, got takes={takes}, max_takes={max_takes}")
    best: Optional[Take] = None
    device = next(codec.parameters()).device
    for take in range(max_takes):
        if take >= takes and best is not None and best.holds and best.wer == 0:
            break
        wav = torch.nn.functional.pad(synth_at(voice, text, codec.sample_rate, take), (0, trailing))
        frames = -(-len(wav) // codec.hop_length)
        codes = codec.encode(codec.pad_to_hop(wav).view(1, 1, -1).to(device))[0, :, :frames].cpu()
        heard_wave = codec.decode(codes[None].to(device))[0, 0].cpu()
        heard = judge.hear(heard_wave, codec.sample_rate)
        candidate = Take(codes, heard_wave, take, heard.text, holds_answer(text, heard.text),
                         word_error_rate([text], [heard.text]), heard.logprob)
        if best is None or candidate.rank < best.rank:
            best = candidate
    assert best is not None
    return best


class Builder:
    """Makes the conversations of every task with the frozen tokenizers."""

    def __init__(self, cfg: Config, toks: dict[str, Tokenizer], seed: int, voices: int = TRAINING_VOICES,
                 workers: int = 1, assistant_takes: int = ASSISTANT_TAKES) -> None:
        self.toks, self.rng, self.workers = toks, random.Random(seed), workers
        self.codec = toks["codec"]
        self.voices = training_voices(voices, seed)
        self.assistant = preset_voice()
        if assistant_takes < 1:
            raise ValueError(f"assistant_takes must be >= 1 (1: the first take, no judge), got {assistant_takes}")
        self.assistant_takes = assistant_takes
        self.max_takes = max(MAX_ASSISTANT_TAKES, assistant_takes)  # a line no take says word for word gets more
        # With one take there is nothing to choose, and no judge to load.
        self.judge = Judge(QUICK_JUDGE, threads=torch.get_num_threads()) if assistant_takes > 1 else None
        self.kept_takes: dict[str, Take] = {}  # assistant line -> the take kept (index.json reports them)
        self.qa = load_spoken_qa()
        self.safety = load_spoken_qa(SAFETY_FILE, split="train")
        self.tts_lines = [x.answer for x in self.qa] + EXTRA_TTS_LINES
        self.image_size = int(toks["image"].metadata["image_size"])
        vmeta = toks["video"].metadata
        self.video_size = int(vmeta["image_size"])
        self.video_frames = 1 + 2 * int(vmeta["frames_per_token_step"])  # 3 token steps

    def speech(self, requests: list[tuple[str, Voice]], batch: int = 16) -> dict[tuple[str, Voice], torch.Tensor]:
        """Codec codes [K, frames] of each distinct (text, voice), synthesised with 0-240 ms of
        trailing silence (in ``self.workers`` processes of one thread each: Kokoro runs at about real
        time on one core) and encoded in batches. The codec is causal, so zero padding after an
        utterance leaves its frames unchanged and each is trimmed to its own length. The assistant's
        lines are the clearest of ``assistant_takes`` takes (:func:`clearest_take`), kept in
        ``self.kept_takes``."""
        sr, hop = self.codec.sample_rate, self.codec.hop_length
        unique = list(dict.fromkeys(requests))
        trailing = {u: int(self.rng.uniform(0, 0.24) * sr) for u in unique}
        out = {}
        if self.judge is not None:  # the assistant's lines: the clearest of several takes
            for text, voice in tqdm([u for u in unique if u[1] == self.assistant], desc="assistant takes", disable=None):
                self.kept_takes[text] = clearest_take(self.codec, voice, text, self.judge, self.assistant_takes,
                                                      self.max_takes, trailing[text, voice])
                out[text, voice] = self.kept_takes[text].codes
            unique = [u for u in unique if u not in out]
        args = ([voice for _, voice in unique], [text for text, _ in unique], [sr] * len(unique))  # of synth_at
        if self.workers > 1:
            with ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"),
                                     initializer=torch.set_num_threads, initargs=(1,)) as pool:
                spoken = list(tqdm(pool.map(synth_at, *args, chunksize=8), total=len(unique), desc="synthesising speech", disable=None))
        else:
            spoken = list(tqdm(map(synth_at, *args), total=len(unique), desc="synthesising speech", disable=None))
        waves = [torch.nn.functional.pad(wav, (0, trailing[u])) for wav, u in zip(spoken, unique)]
        order = sorted(range(len(unique)), key=lambda i: len(waves[i]))  # similar lengths share a batch
        for b in tqdm(range(0, len(order), batch), desc="encoding speech", disable=None):
            idx = order[b : b + batch]
            frames = [-(-len(waves[i]) // hop) for i in idx]
            wav = torch.zeros(len(idx), 1, max(frames) * hop)
            for j, i in enumerate(idx):
                wav[j, 0, : len(waves[i])] = waves[i]
            codes = self.codec.encode(wav)
            for j, i in enumerate(idx):
                out[unique[i]] = codes[j, :, : frames[j]]
        return out

    def image_codes(self, pil: Any, augment_it: bool = True) -> torch.Tensor:
        px = load_image(augment(pil, self.rng) if augment_it else pil, self.image_size)
        return self.toks["image"].encode(px[None])[0]

    def voice(self) -> Voice:
        return self.rng.choice(self.voices)

    def safety_question(self, item: SpokenQA) -> tuple[Optional[tuple[str, Voice]], str]:
        """The voice sample a safety question follows ((line, voice), or None) and its ideal answer
        (a sensitive-trait hedge names the sample voice's accent)."""
        if not item.sample:
            return None, item.answer
        sample = (self.rng.choice(SAMPLE_LINES), self.voice())
        return sample, item.answer.format(accent=accent_of(sample[1]))

    def conversations(self, n_text: int, n_speech: int, n_image: int, n_video: int,
                      n_safety: int = 0) -> Iterator[tuple[str, list[Message]]]:
        rng = self.rng
        for q, a in instruction_pairs(n_text, seed=rng.randrange(1 << 30)):
            yield "text", [Message("user", q), Message("assistant", a)]
        for x in self.qa * QA_TEXT_REPEATS + [x for x in self.safety if not x.sample]:
            yield "text", [Message("user", x.question), Message("assistant", x.answer)]
        # Plan the speech conversations first, then synthesise and encode every utterance once. Spoken
        # questions: each question of the file in turn, in a random training voice; every one is asked
        # (s2s, answered in the assistant voice) and transcribed (asr), so recognising a question and
        # answering it learn from the same utterances. The rest speak answers and lines (tts).
        n_asked = max(1, int(n_speech * ASKED_SHARE))
        asked = [(self.qa[i % len(self.qa)], self.voice()) for i in range(n_asked)]
        plan = [("s2s", x.question, x.answer, v, None) for x, v in asked]
        plan += [("asr", x.question, None, v, None) for x, v in asked]
        plan += [("tts", rng.choice(self.tts_lines), None, None, None) for _ in range(max(0, n_speech - 2 * n_asked))]
        for i in range(n_safety):
            x = self.safety[i % len(self.safety)]
            sample, answer = self.safety_question(x)
            plan.append(("safety", x.question, answer, self.voice(), sample))
        requests = [(answer or text, self.assistant) for kind, text, answer, _, _ in plan if kind != "asr"]
        requests += [(text, voice) for kind, text, _, voice, _ in plan if voice is not None]
        requests += [sample for *_, sample in plan if sample is not None]
        speech = self.speech(requests)
        for kind, text, answer, voice, sample in plan:
            if kind in ("s2s", "safety"):  # spoken question (after a voice sample) -> spoken answer in the assistant's voice
                asked = speech[text, voice] if sample is None else torch.cat([speech[sample], speech[text, voice]], 1)
                yield kind, [Message("user", Audio(asked)),
                             Message("assistant", Audio(speech[answer, self.assistant], text=answer))]
            elif kind == "asr":
                yield kind, [Message("user", [Text("Transcribe this."), Audio(speech[text, voice])]),
                             Message("assistant", text)]
            else:
                yield kind, [Message("user", f"Say: {text}"),
                             Message("assistant", Audio(speech[text, self.assistant], text=text))]
        pictures = [(load_picture(name), caption) for name, caption in IMAGES]
        n_captions = round(n_image * CAPTION_SHARE)
        for i in tqdm(range(n_image), desc="image conversations", disable=None):
            pil, caption = pictures[i % len(pictures)]  # every picture as often
            if i < n_captions:
                yield "caption", [Message("user", [Image(self.image_codes(pil)), Text("Describe the image.")]),
                                  Message("assistant", caption.capitalize())]
            else:  # text -> image: the un-augmented picture, so each caption has one target
                yield "draw", [Message("user", f"Draw {caption}"), Message("assistant", Image(self.image_codes(pil, False)))]
        backgrounds = [load_image(p, self.video_size) for p, _ in pictures[:6]]
        for _ in tqdm(range(n_video), desc="video conversations", disable=None):
            colour, motion = rng.choice(list(SHAPES)), rng.choice(MOTIONS)
            clip = synthetic_clip(rng.choice(backgrounds), colour, motion, self.video_frames, rng)
            codes = self.toks["video"].encode(clip[None])[0]
            yield "video", [Message("user", [Video(codes), Text("What happens in the video?")]),
                            Message("assistant", f"A {colour} square moves from {motion}.")]


# ---- writing ---------------------------------------------------------------------------------------
def write_split(out: Path, split: str, convs: list[tuple[str, Stream]]) -> dict[str, int]:
    """One split as one shard (omni/train/shards.py: the demo corpus is the one-shard case of the format)."""
    writer = TarShardWriter(out / f"{split}-000000.tar")
    for i, (task, stream) in enumerate(convs):
        writer.write(f"{i:07d}", stream, {"task": task, "source": "demo"})
    return writer.close()


def build_omni_corpus(cfg: Config, out: Optional[str | Path] = None, scale: float = 1.0, untrained: bool = False,
                      workers: Optional[int] = None, assistant_takes: Optional[int] = None) -> Path:
    """Build ``cfg``'s corpus into ``out`` (default data.path); ``scale`` multiplies every task's count;
    ``untrained`` encodes with random-weight tokenizers (tests only, see :func:`frozen_tokenizers`);
    ``workers`` speech-synthesis processes (default: one per CPU); ``assistant_takes`` takes of each
    assistant line to keep the clearest of (default :data:`ASSISTANT_TAKES`; 1 with ``untrained``,
    whose codec decodes to noise that no judge hears)."""
    out = Path(out or cfg.data.path)
    out.mkdir(parents=True, exist_ok=True)
    toks, sources = frozen_tokenizers(cfg, out, untrained)
    tcfg = cfg.tokenizer
    sp_folder = Path(tcfg.path).parent if tcfg.path.endswith(".model") else Path(tcfg.path)
    if tcfg.kind == "sentencepiece" and not (sp_folder / SentencePieceTokenizer.MODEL_FILE).exists():
        qa = load_spoken_qa() + load_spoken_qa(SAFETY_FILE)
        texts = [f"{q}\n{a}" for q, a in instruction_pairs(2000)] + [f"{x.question}\n{x.answer}" for x in qa]
        texts += SAMPLE_LINES
        texts += EXTRA_TTS_LINES + [c for _, c in IMAGES] + [f"A {c} square moves from {m}." for c in SHAPES for m in MOTIONS]
        texts += ["Transcribe this.", "Describe the image.", "What happens in the video?", "Say:", "Draw"]
        print(f"training a {tcfg.vocab_size}-piece sentencepiece tokenizer -> {tcfg.path}")
        SentencePieceTokenizer.train(texts * 4, tcfg.vocab_size, sp_folder)
    text = build_text_tokenizer(tcfg)
    vocab = OmniVocab.build(text, toks["codec"].metadata, toks["image"].metadata, toks["video"].metadata)
    fmt = ConversationFormat(text, vocab)
    n = lambda k: max(1, int(k * scale))  # noqa: E731
    takes = (1 if untrained else ASSISTANT_TAKES) if assistant_takes is None else assistant_takes
    builder = Builder(cfg, toks, cfg.train.seed, workers=workers or os.cpu_count() or 1, assistant_takes=takes)
    with torch.no_grad():
        convs = list(builder.conversations(*(n(c) for c in COUNTS)))
    random.Random(cfg.train.seed).shuffle(convs)
    splits: dict[str, list[tuple[str, Stream]]] = {"train": [], "val": []}
    counts: dict[str, int] = {}
    for i, (task, messages) in enumerate(convs):
        splits["val" if i % VAL_EVERY == VAL_EVERY - 1 else "train"].append((task, fmt.serialise(messages)))
        counts[task] = counts.get(task, 0) + 1
    index = {
        "format": FORMAT,
        "vocab": vocab.to_dict(),
        "tokenizers": {name: str(out / "tokenizers" / name) for name in toks},
        "tokenizer_sources": sources,
        "splits": {k: [write_split(out, k, v)] for k, v in splits.items() if v},
        "tasks": counts,
        "assistant_voice": preset_voice().name,
        "assistant_takes": takes_report(builder.kept_takes, takes, builder.max_takes),
    }
    (out / "index.json").write_text(json.dumps(index, indent=1))
    total = sum(s["positions"] for shards in index["splits"].values() for s in shards)
    print(f"omni corpus: {len(convs)} conversations {counts}, {total:,} positions (vocab {vocab.size}) -> {out}")
    if builder.kept_takes:
        r = index["assistant_takes"]
        print(f"assistant lines: {r['lines']}, kept take {r['kept']} ({takes} judged, up to {r['max_takes']}); "
              f"{len(r['not_word_for_word'])} not heard word for word by Whisper {QUICK_JUDGE} in any take, "
              f"{len(r['content_words_missed'])} missing a content word")
    return out


def takes_report(kept: dict[str, Take], takes: int, max_takes: int) -> dict[str, Any]:
    """index.json's summary of the assistant takes (``takes`` judged per line, up to ``max_takes``): how
    many lines, how often each take was kept, the lines no take was heard word for word in and those
    whose kept take misses a content word (each with the kept take's transcript)."""
    return {"takes": takes, "max_takes": max_takes if kept else takes,
            "judge": QUICK_JUDGE if kept else None, "lines": len(kept),
            "kept": {str(k): n for k, n in sorted(Counter(t.take for t in kept.values()).items())},
            "not_word_for_word": {text: t.heard for text, t in kept.items() if t.wer > 0},
            "content_words_missed": {text: t.heard for text, t in kept.items() if not t.holds}}


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="omni-tiny", help="config (tokenizers, data.path)")
    p.add_argument("--out", default=None, help="corpus folder (default: the config's data.path)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the number of conversations per task")
    p.add_argument("--untrained", action="store_true",
                   help="encode with UNTRAINED (random) codec/image/video tokenizers: wiring checks only, outputs are noise")
    p.add_argument("--source", action="append", default=[], metavar="NAME[:SPLIT]=PATH",
                   help=f"a corpus on disk to build shards from (repeatable); NAME: {', '.join(sorted(SOURCES))}")
    p.add_argument("--shards", default=None, help="with --source: the shard corpus folder to write (resumable)")
    p.add_argument("--mix", default=None, help="with --source: task weights, a YAML file (default data/omni-mix.yaml) or asr=1,tts=0.5,...")
    p.add_argument("--workers", type=int, default=None,
                   help="speech-synthesis processes (default: one per CPU); with --source: tokenizing processes (one GPU "
                        "each, round robin, when present; default 1)")
    p.add_argument("--assistant-takes", type=int, default=None,
                   help=f"takes of each assistant line to keep the clearest and surest of through the codec, judged by "
                        f"Whisper {QUICK_JUDGE} (default {ASSISTANT_TAKES}; 1: the first take, no judge)")
    p.add_argument("--shard-examples", type=int, default=100_000,
                   help="with --source: conversations per shard (default ~1 GB of speech conversations, docs/data.md)")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if bool(args.source) != bool(args.shards):
        p.error("--source and --shards go together: --source NAME=PATH ... --shards OUT")
    if args.source:
        out = Path(args.shards)
        toks, sources = frozen_tokenizers(cfg, out, args.untrained)
        build_shards(cfg, args.source, out, toks, sources, args.mix, args.shard_examples, args.workers or 1)
    else:
        build_omni_corpus(cfg, args.out, args.scale, args.untrained, args.workers, args.assistant_takes)


if __name__ == "__main__":
    main()
