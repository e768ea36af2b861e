"""Small shared builders for the omni tests: a trained-in-a-second text tokenizer, a random codec,
and a tiny OmniModel over the unified vocabulary (no corpus, no image/video tokenizer needed)."""
from __future__ import annotations

from pathlib import Path

import torch

from omni.config import ModelConfig
from omni.conversation import ConversationFormat, OmniVocab
from omni.model.decoder import Decoder
from omni.model.omni import OmniConfig, OmniModel
from omni.tokenizers.codec import CodecConfig, SpeechCodec
from omni.tokenizers.text import SentencePieceTokenizer

SENTENCES = [
    "hello there, how are you today?", "the cat sat on the mat.", "what is the capital of france?",
    "paris is the capital of france.", "a photo of a cat.", "describe the video please.",
    "one two three four five six seven eight nine ten.", "the quick brown fox jumps over the lazy dog.",
] * 20


def text_tokenizer(folder: Path) -> SentencePieceTokenizer:
    return SentencePieceTokenizer.train(SENTENCES, 400, folder)


def codec(num_codebooks: int = 4, codebook_size: int = 64) -> SpeechCodec:
    torch.manual_seed(0)
    cfg = CodecConfig(channels=8, max_channels=32, dim=32, num_codebooks=num_codebooks, codebook_size=codebook_size)
    return SpeechCodec(cfg).eval()


def vocab(text, codec_: SpeechCodec) -> OmniVocab:
    return OmniVocab.build(text, codec_.metadata, {"codebook_size": 32, "grid": (2, 3)},
                           {"codebook_size": 16, "grid": (2, 2)})


def model(v: OmniVocab, max_seq_len: int = 256, seed: int = 0) -> OmniModel:
    torch.manual_seed(seed)
    mcfg = ModelConfig(vocab_size=v.size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                       max_seq_len=max_seq_len)
    ocfg = OmniConfig(audio_codebooks=v.audio_codebooks, audio_codebook_size=v.audio_codes, depth_dim=32,
                      depth_layers=1, depth_heads=2, depth_ffn_dim=64)
    return OmniModel(Decoder(mcfg), ocfg).eval()


def setup(folder: Path, **kw):
    """(text tokenizer, codec, vocab, format, model)"""
    tok = text_tokenizer(folder)
    c = codec()
    v = vocab(tok, c)
    return tok, c, v, ConversationFormat(tok, v), model(v, **kw)
