"""The one tokenizer interface, for every modality (DESIGN.md §3).

A tokenizer turns raw input (text, waveform, image, video) into discrete tokens and back:

    tokens = tok.encode(raw)      raw = tok.decode(tokens)
    tok.metadata                  # modality, vocab size, rates, codebooks, ...
    tok.save(folder)              tok2 = load_tokenizer(folder)

Streaming tokenizers (the speech codec, the video tokenizer's temporal part) are also
:class:`omni.streaming.StreamingModule` s: inside ``with tok.streaming(batch):`` chunked
``encode``/``decode`` calls give *exactly* the offline result.

Every saved tokenizer folder holds ``tokenizer.json`` with a ``class`` key naming the registered
class, so :func:`load_tokenizer` restores any of them without the caller knowing which.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterable

from torch import nn

from omni.config import _coerce, _to_plain, without_retired_keys
from omni.io.tensors import load_tensors, save_tensors

# Special tokens reserved from day one in every text vocabulary, in this order. Roles, turn
# boundaries and modality markers; the omni model appends modality code ranges after them.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|pad|>",
    "<|bos|>",
    "<|eos|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end_of_turn|>",
    "<|text|>",
    "<|audio_start|>",
    "<|audio_end|>",
    "<|image_start|>",
    "<|image_end|>",
    "<|video_start|>",
    "<|video_end|>",
    "<|frame|>",
    "<|row_end|>",
    "<|text_pad|>",
    "<|interrupt|>",
) + tuple(f"<|reserved_{i}|>" for i in range(14))


class Tokenizer(ABC):
    """Base class of all tokenizers."""

    modality: str = "text"

    @abstractmethod
    def encode(self, raw: Any) -> Any:
        """Raw input -> tokens."""

    @abstractmethod
    def decode(self, tokens: Any) -> Any:
        """Tokens -> raw output."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of distinct token ids (per codebook for multi-codebook tokenizers)."""

    @property
    def metadata(self) -> dict[str, Any]:
        """Facts a consumer needs: modality, vocab size, and modality-specific rates/shapes."""
        return {"modality": self.modality, "vocab_size": self.vocab_size}

    @abstractmethod
    def _save(self, folder: Path) -> dict[str, Any]:
        """Write weights/model files into ``folder``; return the JSON-able constructor state."""

    @classmethod
    @abstractmethod
    def _load(cls, folder: Path, state: dict[str, Any]) -> "Tokenizer":
        """Inverse of :meth:`_save`."""

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = self._save(folder)
        meta = {"class": type(self).__name__, "state": state, "metadata": self.metadata}
        (folder / "tokenizer.json").write_text(json.dumps(meta, indent=2))
        return folder


_REGISTRY: dict[str, type[Tokenizer]] = {}


def register_tokenizer(cls: type[Tokenizer]) -> type[Tokenizer]:
    """Class decorator: make ``cls`` loadable by :func:`load_tokenizer`."""
    _REGISTRY[cls.__name__] = cls
    return cls


def load_tokenizer(folder: str | Path) -> Tokenizer:
    """Load any tokenizer saved with :meth:`Tokenizer.save`. (Importing this module runs
    omni/tokenizers/__init__.py first, which registers the built-in classes.)"""
    folder = Path(folder)
    meta_path = folder / "tokenizer.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{folder} holds no tokenizer.json; was it written by Tokenizer.save()?")
    try:
        meta = json.loads(meta_path.read_text())
        name = meta["class"]
    except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{meta_path} is corrupt ({e}); re-save the tokenizer") from e
    if name not in _REGISTRY:
        raise ValueError(f"{meta_path}: unknown tokenizer class {name!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name]._load(folder, meta.get("state", {}))


class TextTokenizer(Tokenizer):
    """Text tokenizers: ``encode(str) -> list[int]``, ``decode(list[int]) -> str``, with specials.

    ``encode`` treats its text as *literal*: a special token's spelling typed in the text (say
    ``"<|im_end|>"`` or ``"<|image_start|>"``) is encoded as the ordinary characters it is made of,
    never as the special id, so user-supplied text cannot forge turns, roles or modality markers.
    Special ids come only from code that asks for them by name (:meth:`token_id`, :meth:`chat_prompt`,
    the conversation format). Trusted callers who need specials inside a prompt build the id list
    themselves (``[tok.token_id("<|user|>"), *tok.encode(text), ...]``) and pass ids, e.g. to
    ``TextGenerator.generate``.
    """

    modality = "text"

    @abstractmethod
    def token_id(self, token: str) -> int:
        """Id of a special token such as ``"<|user|>"``; KeyError with a clear message if absent."""

    @abstractmethod
    def encode(self, raw: str) -> list[int]:
        """Ids of ``raw`` read as literal text (special spellings included: they stay characters)."""

    @property
    def bos_id(self) -> int:
        return self.token_id("<|bos|>")

    @property
    def eos_id(self) -> int:
        return self.token_id("<|eos|>")

    @property
    def pad_id(self) -> int:
        return self.token_id("<|pad|>")

    @property
    def end_of_turn_id(self) -> int:
        return self.token_id("<|end_of_turn|>")

    def chat_prompt(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a text chat: ``[{"role": "user", "content": "..."}]`` -> ids ending, if asked,
        with the assistant's turn opened. Roles: system, user, assistant.
        Message contents are literal text (see :meth:`encode`)."""
        ids: list[int] = [self.bos_id]
        for m in messages:
            role = m.get("role")
            if role not in ("system", "user", "assistant"):
                raise ValueError(f"unknown chat role {role!r}; use system, user or assistant")
            ids += [self.token_id(f"<|{role}|>"), *self.encode(m["content"]), self.end_of_turn_id]
        if add_generation_prompt:
            ids.append(self.token_id("<|assistant|>"))
        return ids


def save_weights_and_config(module: nn.Module, cfg: Any, folder: Path) -> dict[str, Any]:
    """Weights to ``folder/model.safetensors``; returns the config as JSON-able tokenizer state.
    Shared by every neural tokenizer (codec, image, video)."""
    save_tensors(module.state_dict(), folder / "model.safetensors")  # refuses NaN/inf weights, by name
    return {"config": _to_plain(cfg)}


def load_weights_and_config(cls: type, cfg_cls: type, section: str, folder: Path, state: dict[str, Any]) -> Any:
    """Inverse of :func:`save_weights_and_config`: ``cls(cfg)`` with its weights, in eval mode (config keys
    an older version saved that have since moved or gone are dropped: :func:`omni.config.without_retired_keys`)."""
    weights = folder / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"{folder} has no model.safetensors; was it written by Tokenizer.save()?")
    model = cls(_coerce(without_retired_keys(section, state["config"]), cfg_cls, section))
    try:
        model.load_state_dict(load_tensors(weights))  # NonFiniteWeights names a NaN/inf tensor
    except RuntimeError as e:
        raise RuntimeError(
            f"{weights} does not fit this version's {cls.__name__} (written by an older layout?); "
            f"retrain it with `python train.py --config configs/<{section} config>`.\n{e}"
        ) from e
    return model.eval()


def literal_pieces(text: str, spellings: Iterable[str]) -> list[str]:
    """``text`` cut so that no piece contains any of ``spellings`` whole: every occurrence (overlapping
    ones included) is split after its first character. Encoding the pieces one by one therefore never
    yields a special id, for tokenizers (sentencepiece) that always match their special symbols."""
    cuts = set()
    for s in spellings:
        i = text.find(s) if s else -1
        while i >= 0:
            cuts.add(i + 1)
            i = text.find(s, i + 1)
    bounds = [0, *sorted(cuts), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
