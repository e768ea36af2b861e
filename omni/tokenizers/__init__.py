"""Tokenizers for every modality behind one interface (see base.py)."""
from omni.tokenizers.base import (  # noqa: F401
    SPECIAL_TOKENS,
    TextTokenizer,
    Tokenizer,
    load_tokenizer,
    register_tokenizer,
)
