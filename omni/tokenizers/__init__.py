"""Tokenizers for every modality behind one interface (see base.py)."""
from omni.tokenizers.base import (  # noqa: F401
    SPECIAL_TOKENS,
    TextTokenizer,
    Tokenizer,
    load_tokenizer,
    register_tokenizer,
)

# Built-in modality tokenizers: importing registers their classes (load_tokenizer).
from omni.tokenizers import codec, image, text, video  # noqa: F401,E402
