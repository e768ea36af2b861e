"""Text tokenizers behind :class:`omni.tokenizers.base.TextTokenizer`.

* :class:`SentencePieceTokenizer` — trained on our corpus for from-scratch configs; the
  :data:`SPECIAL_TOKENS` are user-defined symbols at ids ``0 .. len(SPECIAL_TOKENS)-1``.
* :class:`GGUFTokenizer` — the byte-level BPE stored inside a GGUF file (SmolLM2), with our
  :data:`SPECIAL_TOKENS` appended after its vocabulary and the model's own ChatML chat template.

Pick one from a config with :func:`build_text_tokenizer`.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Iterable

import sentencepiece as spm
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from omni.config import TokenizerConfig
from omni.io.gguf import gguf_reader, resolve_gguf
from omni.tokenizers.base import SPECIAL_TOKENS, TextTokenizer, literal_pieces, register_tokenizer


@register_tokenizer
class SentencePieceTokenizer(TextTokenizer):
    """A sentencepiece BPE model (byte fallback, so any unicode text round-trips)."""

    MODEL_FILE = "spm.model"

    def __init__(self, model_file: str | Path) -> None:
        self.model_file = Path(model_file)
        if not self.model_file.exists():
            raise FileNotFoundError(
                f"sentencepiece model {self.model_file} not found; build it with data/build_text.py "
                "(or SentencePieceTokenizer.train)"
            )
        self.sp = spm.SentencePieceProcessor(model_file=str(self.model_file))
        # Specials are looked up by piece; a missing one maps to unk, which we refuse.
        self._special = {t: self.sp.piece_to_id(t) for t in SPECIAL_TOKENS}
        if any(self.sp.id_to_piece(i) != t for t, i in self._special.items()):
            raise ValueError(f"{self.model_file} was not trained with omni's SPECIAL_TOKENS; retrain it")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, folder: str | Path) -> "SentencePieceTokenizer":
        """Train a BPE model of ``vocab_size`` pieces (specials included) on ``texts``; write it to
        ``folder`` (``spm.model`` + ``tokenizer.json``) and return it.

        ``texts`` are lines or paragraphs (longer than 16 KiB are skipped by sentencepiece); at most
        2M of them, sampled, are used. ``vocab_size`` must exceed 256 bytes + the specials (~300)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_prefix=str(folder / Path(cls.MODEL_FILE).stem),
            vocab_size=vocab_size,
            model_type="bpe",
            # Specials first (ids 0..31), then unk; no sentencepiece bos/eos/pad (ours replace them).
            user_defined_symbols=list(SPECIAL_TOKENS),
            unk_id=len(SPECIAL_TOKENS),
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            byte_fallback=True,
            # Keep text exactly as written so decode(encode(s)) == s.
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            split_digits=True,
            character_coverage=0.9995,
            max_sentence_length=16384,
            input_sentence_size=2_000_000,
            shuffle_input_sentence=True,
            hard_vocab_limit=False,
            minloglevel=2,
        )
        tok = cls(folder / cls.MODEL_FILE)
        tok.save(folder)
        return tok

    def encode(self, raw: str) -> list[int]:
        # sentencepiece always matches user-defined symbols: cut their spellings so text stays literal.
        return [i for piece in literal_pieces(raw, self._special) for i in self.sp.encode(piece)]

    def decode(self, tokens: Iterable[int]) -> str:
        return self.sp.decode(list(tokens))

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def token_id(self, token: str) -> int:
        if token not in self._special:
            raise KeyError(f"{token!r} is not a special token of this tokenizer; known: {list(self._special)}")
        return self._special[token]

    def _save(self, folder: Path) -> dict[str, Any]:
        target = folder / self.MODEL_FILE
        if target.resolve() != self.model_file.resolve():
            shutil.copyfile(self.model_file, target)
        return {"model_file": self.MODEL_FILE}

    @classmethod
    def _load(cls, folder: Path, state: dict[str, Any]) -> "SentencePieceTokenizer":
        return cls(folder / state["model_file"])


# How our role/boundary specials map onto SmolLM2's own tokens so that documents and chats look
# the way the model was trained: documents end with <|endoftext|>, turns with <|im_end|>.
GGUF_SPECIAL_ALIASES = {"<|bos|>": "<|endoftext|>", "<|eos|>": "<|endoftext|>", "<|end_of_turn|>": "<|im_end|>"}
# SmolLM2 (llama.cpp pre-tokenizer "smollm"): every digit on its own, then GPT-2's byte-level regex.
_SMOLLM_PRETOKENIZER = "smollm"


@register_tokenizer
class GGUFTokenizer(TextTokenizer):
    """Byte-level BPE from a GGUF file, with omni's SPECIAL_TOKENS appended after its vocabulary.

    Ids ``0 .. n_base-1`` are the file's, ``n_base ..`` are :data:`SPECIAL_TOKENS` in order.
    ``<|bos|>``/``<|eos|>``/``<|end_of_turn|>`` resolve to the model's own tokens
    (:data:`GGUF_SPECIAL_ALIASES`); :meth:`chat_prompt` renders the model's chat template.
    :meth:`encode` reads text literally: special spellings in it stay characters (transformers'
    ``split_special_tokens=True``); only the chat template's own markup becomes control tokens.
    """

    # Stands in for each message's content while the chat template renders (Unicode private use).
    _SLOT = "\ue000{}\ue001"

    def __init__(self, backend: Any, n_base: int, chat_template: str) -> None:
        self.backend = backend  # a `tokenizers.Tokenizer`
        self.backend.encode_special_tokens = True  # text is literal: never match added tokens in it
        self._markup = {t.content: i for i, t in backend.get_added_tokens_decoder().items() if t.special}
        self._markup_re = re.compile("(" + "|".join(re.escape(t) for t in sorted(self._markup, key=len, reverse=True)) + ")")
        self.n_base = n_base
        self.chat_template = chat_template
        self._special = {t: n_base + i for i, t in enumerate(SPECIAL_TOKENS)}
        for ours, theirs in GGUF_SPECIAL_ALIASES.items():
            self._special[ours] = backend.token_to_id(theirs)

    @classmethod
    def from_gguf(cls, name_or_path: str | Path = "smollm2-135m") -> "GGUFTokenizer":
        """Build from the tokenizer metadata of a GGUF file ("smollm2-135m" or a path)."""
        path = resolve_gguf(name_or_path)
        fields = gguf_reader(path).fields

        def field(key: str) -> Any:
            if key not in fields:
                raise ValueError(f"{path} has no {key}; it does not carry a tokenizer omni can read")
            return fields[key].contents()

        if field("tokenizer.ggml.model") != "gpt2":
            raise ValueError(f"{path}: only byte-level BPE (tokenizer.ggml.model = gpt2) is supported")
        pre = fields["tokenizer.ggml.pre"].contents() if "tokenizer.ggml.pre" in fields else "default"
        tokens, types = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type")
        merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges")]
        vocab = {t: i for i, t in enumerate(tokens)}
        backend = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        if pre == _SMOLLM_PRETOKENIZER:
            backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        elif pre in ("default", "gpt2"):
            backend.pre_tokenizer = byte_level
        else:
            raise ValueError(f"{path}: pre-tokenizer {pre!r} is not supported (known: gpt2, smollm)")
        backend.decoder = decoders.ByteLevel()
        control = [t for t, ty in zip(tokens, types) if ty == 3]  # 3 = CONTROL in llama.cpp's token types
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
        template = fields["tokenizer.chat_template"].contents() if "tokenizer.chat_template" in fields else ""
        return cls(backend, len(tokens), template)

    def encode(self, raw: str) -> list[int]:
        return self.backend.encode(raw, add_special_tokens=False).ids

    def decode(self, tokens: Iterable[int]) -> str:
        return self.backend.decode(list(tokens), skip_special_tokens=False)

    @property
    def vocab_size(self) -> int:
        return self.n_base + len(SPECIAL_TOKENS)

    def token_id(self, token: str) -> int:
        if token in self._special:
            return self._special[token]
        tid = self.backend.token_to_id(token)
        if tid is None:
            raise KeyError(f"{token!r} is not a token of this tokenizer")
        return tid

    def _encode_markup(self, text: str) -> list[int]:
        """Trusted template text: control-token spellings become their ids, the rest is literal."""
        return [i for piece in self._markup_re.split(text) if piece
                for i in ([self._markup[piece]] if piece in self._markup else self.encode(piece))]

    def chat_prompt(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        """The model's own chat template (ChatML for SmolLM2) rendered and encoded.

        The template renders with a placeholder for each message's content; its markup is encoded
        with control tokens, the contents literally (:meth:`encode`), so a message cannot open or
        close turns. Raises ValueError for unknown roles, or for a template that does not place
        every content exactly once."""
        if not self.chat_template:
            return super().chat_prompt(messages, add_generation_prompt)
        for m in messages:
            if m.get("role") not in ("system", "user", "assistant"):
                raise ValueError(f"unknown chat role {m.get('role')!r}; use system, user or assistant")
        slots = [self._SLOT.format(i) for i in range(len(messages))]
        text = ImmutableSandboxedEnvironment().from_string(self.chat_template).render(
            messages=[{**m, "content": slot} for m, slot in zip(messages, slots)],
            add_generation_prompt=add_generation_prompt,
        )
        ids: list[int] = []
        pos = 0
        for m, slot in zip(messages, slots):
            at = text.find(slot, pos)
            if at < 0 or text.count(slot) != 1:
                raise ValueError("the chat template does not place each message's content exactly once, "
                                 "unchanged; omni cannot keep user text literal with it")
            ids += self._encode_markup(text[pos:at]) + self.encode(str(m["content"]))
            pos = at + len(slot)
        return ids + self._encode_markup(text[pos:])

    def _save(self, folder: Path) -> dict[str, Any]:
        self.backend.save(str(folder / "bpe.json"))
        return {"bpe_file": "bpe.json", "n_base": self.n_base, "chat_template": self.chat_template}

    @classmethod
    def _load(cls, folder: Path, state: dict[str, Any]) -> "GGUFTokenizer":
        return cls(HFTokenizer.from_file(str(folder / state["bpe_file"])), state["n_base"], state["chat_template"])


def build_text_tokenizer(cfg: TokenizerConfig) -> TextTokenizer:
    """The text tokenizer a config names: ``kind: gguf`` (path: "smollm2-135m" or a .gguf file) or
    ``kind: sentencepiece`` (path: a trained ``.model`` file or the folder holding it)."""
    if cfg.kind == "gguf":
        return GGUFTokenizer.from_gguf(cfg.path or "smollm2-135m")
    if cfg.kind == "sentencepiece":
        if not cfg.path:
            raise ValueError("tokenizer.path is empty; set it to a sentencepiece .model file (data/build_text.py)")
        path = Path(cfg.path)
        return SentencePieceTokenizer(path / SentencePieceTokenizer.MODEL_FILE if path.is_dir() else path)
    raise ValueError(f"tokenizer.kind must be 'sentencepiece' or 'gguf', got {cfg.kind!r}")
