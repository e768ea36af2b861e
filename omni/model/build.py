"""Build the decoder a config describes: random init, or weights from a pretrained GGUF file."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Optional

from omni.config import Config, ConfigError
from omni.io.gguf import load_gguf, read_gguf_shape
from omni.model.decoder import Decoder, ModelConfig
from omni.tokenizers.text import GGUFTokenizer

# Fields that must agree between the config and a pretrained file (vocab may grow, context shrink).
_SHAPE_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "qk_norm", "tie_embeddings")


def check_pretrained_shape(cfg: ModelConfig, file_cfg: ModelConfig, source: str) -> None:
    """Raise ConfigError naming every model.* field that ``cfg`` sets differently from the file."""
    bad = [f"model.{k}={getattr(cfg, k)} but the file has {getattr(file_cfg, k)}"
           for k in _SHAPE_FIELDS if getattr(cfg, k) != getattr(file_cfg, k)]
    for k in ("rope_theta", "norm_eps"):
        if not math.isclose(getattr(cfg, k), getattr(file_cfg, k), rel_tol=1e-6):
            bad.append(f"model.{k}={getattr(cfg, k)} but the file has {getattr(file_cfg, k)}")
    if cfg.vocab_size < file_cfg.vocab_size:
        bad.append(f"model.vocab_size={cfg.vocab_size} is smaller than the file's {file_cfg.vocab_size}")
    if cfg.max_seq_len > file_cfg.max_seq_len:
        bad.append(f"model.max_seq_len={cfg.max_seq_len} exceeds the file's context {file_cfg.max_seq_len}")
    if bad:
        raise ConfigError(
            f"config does not match pretrained model {source}: " + "; ".join(bad)
            + ". Fix the config's model section (or drop model.init_from for a random init)."
        )


def build_model(cfg: Config, vocab_size: Optional[int] = None) -> Decoder:
    """The decoder of ``cfg.model``: random init, or ``cfg.model.init_from`` ("smollm2-135m" or a
    .gguf path) loaded and its vocabulary extended to ``vocab_size`` (default ``cfg.model.vocab_size``;
    the omni model passes its corpus's) with resize_vocab. ``cfg`` is not modified."""
    mcfg = dataclasses.replace(cfg.model, vocab_size=vocab_size or cfg.model.vocab_size)
    if not mcfg.init_from:
        return Decoder(mcfg)
    # Check the shape from the metadata first, so a wrong config fails before any dequantising.
    check_pretrained_shape(mcfg, ModelConfig(**read_gguf_shape(mcfg.init_from)), mcfg.init_from)
    shape, state = load_gguf(mcfg.init_from)
    # Shape from the file; run-time choices (context length, attention backend) from the config.
    model = Decoder(dataclasses.replace(mcfg, vocab_size=shape["vocab_size"]))
    model.load_state_dict(state, strict=True)
    model.resize_vocab(mcfg.vocab_size)
    return model


def load_pretrained(name_or_path: str | Path = "smollm2-135m") -> tuple[Decoder, GGUFTokenizer]:
    """The pretrained decoder (float32, eval mode) and its tokenizer, vocabulary not extended."""
    shape, state = load_gguf(name_or_path)
    model = Decoder(ModelConfig(**shape))
    model.load_state_dict(state, strict=True)
    return model.eval(), GGUFTokenizer.from_gguf(name_or_path)
