"""The shared decoder: a Llama-family transformer (RMSNorm, RoPE, GQA, SwiGLU, optional QK-norm).

One file, one config (:class:`ModelConfig`, the ``model`` section of a config). Attention goes through the single entry point
:func:`omni.model.attention.attention`, so the backend is a switch (``model.attention``).

Two ways to call it:

* training / scoring: ``logits = model(tokens, positions=..., mask=AttentionMask(...))``;
* streaming: inside ``with model.streaming(batch_size, max_len=L):`` each call appends its tokens to a
  static, preallocated KV cache and returns logits for them; positions and masks follow the cache.

Modalities other than text enter as embeddings (``embeds=``) and leave through the hidden states
(``return_hidden=True``), so the omni model builds on this file without copying it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from omni.config import ConfigError
from omni.model.attention import AttentionMask, attention
from omni.streaming import StreamingModule, StreamingState

Tensor = torch.Tensor


@dataclass
class ModelConfig:
    """Shape of the decoder: the ``model`` section of a config (registered in :data:`omni.config.SECTIONS`)."""

    vocab_size: int = 32_000
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    ffn_dim: int = 688
    max_seq_len: int = 512
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    qk_norm: bool = False
    tie_embeddings: bool = True
    # Attention backend: "auto" picks the fastest available for the device (see
    # omni/model/attention.py); "reference", "sdpa", or any registered backend forces one.
    attention: str = "auto"
    # Initialise from a pretrained model: "" (random), "smollm2-135m", or a path to a .gguf file.
    init_from: str = ""
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def validate(self) -> None:
        if self.dim % self.n_heads:
            raise ConfigError(f"model.dim={self.dim} must be divisible by model.n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"model.n_heads={self.n_heads} must be a multiple of model.n_kv_heads={self.n_kv_heads}"
            )
        for name in ("vocab_size", "dim", "n_layers", "ffn_dim", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in float32 for stability under bf16 autocast, as Llama does.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos, sin tables [max_len, head_dim // 2] for rotary embeddings (float32)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate halves of x [B, H, S, D] by angles cos/sin [B, S, D/2] (the Llama/HF "rotate_half" layout)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    cos, sin = cos[:, None], sin[:, None]
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return out.type_as(x)


class KVCache(StreamingState):
    """Static per-layer cache: k, v [batch, n_kv_heads, max_len, head_dim]; span ids [batch, max_len]."""

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, device, dtype) -> None:
        self.k = torch.zeros(batch, n_kv_heads, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.span_ids = torch.zeros(batch, max_len, dtype=torch.long, device=device)

    def write(self, positions: Tensor, k: Tensor, v: Tensor, span_ids: Optional[Tensor]) -> None:
        """Store k, v [B, Hkv, S, D] at absolute ``positions`` [B, S] (a static-shape scatter)."""
        idx = positions[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
        self.k.scatter_(2, idx, k.to(self.k.dtype))
        self.v.scatter_(2, idx, v.to(self.v.dtype))
        self.span_ids.scatter_(1, positions, span_ids if span_ids is not None else torch.zeros_like(positions))

    def reset(self, mask: Optional[Tensor] = None) -> None:
        # Stale k/v beyond a row's offset are never visible (causal), so only span ids need clearing.
        if mask is None:
            self.span_ids.zero_()
        else:
            self.span_ids[mask] = 0

    def truncate(self, offset: Tensor) -> None:
        """Forget span ids at positions >= offset [batch]: a rewound row must not see stale spans."""
        self.span_ids.masked_fill_(torch.arange(self.span_ids.shape[1], device=offset.device) >= offset[:, None], 0)


class DecoderState(StreamingState):
    """Per-row write position of the KV cache: ``offset`` [batch] long."""

    def __init__(self, batch: int, max_len: int, device) -> None:
        self.offset = torch.zeros(batch, dtype=torch.long, device=device)
        self.max_len = max_len

    def reset(self, mask: Optional[Tensor] = None) -> None:
        if mask is None:
            self.offset.zero_()
        else:
            self.offset[mask] = 0


class Attention(StreamingModule):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.backend = cfg.attention
        self.max_seq_len = cfg.max_seq_len

    def _init_streaming_state(self, batch_size: int, max_len: Optional[int] = None, **_: Any) -> KVCache:
        w = self.wk.weight
        return KVCache(batch_size, self.n_kv_heads, max_len or self.max_seq_len, self.head_dim, w.device, w.dtype)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: AttentionMask, positions: Tensor) -> Tensor:
        b, s, _ = x.shape
        q = self.wq(x).view(b, s, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        cache = self._streaming_state
        if cache is not None:
            cache.write(positions, k, v, mask.span_ids)
            kv_len = cache.k.shape[2]
            # Eager on CPU, skip the unused tail (a host sync is free here, not on GPU); a compiled
            # step reads the whole static cache so that one graph serves every position.
            if not x.is_cuda and not torch.compiler.is_compiling():
                kv_len = int(positions.max()) + 1
            k, v = cache.k[:, :, :kv_len], cache.v[:, :, :kv_len]
            span = cache.span_ids[:, :kv_len] if mask.span_ids is not None else None
            mask = AttentionMask(causal=True, span_ids=span, sliding_window=mask.sliding_window,
                                 q_offset=positions[:, 0])
        out = attention(q, k.to(q.dtype), v.to(q.dtype), mask, backend=self.backend)
        return self.wo(out.transpose(1, 2).reshape(b, s, self.n_heads * self.head_dim))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(StreamingModule):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg.dim, cfg.ffn_dim)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: AttentionMask, positions: Tensor) -> Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, mask, positions)
        return x + self.feed_forward(self.ffn_norm(x))


class Decoder(StreamingModule):
    """Llama-family decoder over a (possibly extended) vocabulary."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.activation_checkpointing = False
        self.reset_parameters()

    # ---- construction -------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)  # norm weights
            elif name.endswith(("wo.weight", "w2.weight")):
                # Residual projections scaled down with depth (GPT-2 / nanoGPT).
                nn.init.normal_(p, std=std / math.sqrt(2 * self.cfg.n_layers))
            else:
                nn.init.normal_(p, std=std)

    @property
    def vocab_size(self) -> int:
        return self.tok_embeddings.num_embeddings

    def num_params(self, embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n if embeddings else n - self.tok_embeddings.weight.numel()

    @torch.no_grad()
    def resize_vocab(self, new_size: int) -> None:
        """Extend the vocabulary to ``new_size`` (new modality tokens). Existing rows are untouched, so
        logits of existing tokens for existing inputs are unchanged; new rows start at the mean embedding."""
        old = self.vocab_size
        if new_size < old:
            raise ValueError(f"cannot shrink the vocabulary from {old} to {new_size}")
        if new_size == old:
            return
        emb = self.tok_embeddings.weight
        new_emb = nn.Embedding(new_size, emb.shape[1], device=emb.device, dtype=emb.dtype)
        new_emb.weight[:old] = emb
        new_emb.weight[old:] = emb.mean(0, keepdim=True)
        self.tok_embeddings = new_emb
        if self.output is not None:
            w = self.output.weight
            out = nn.Linear(w.shape[1], new_size, bias=False, device=w.device, dtype=w.dtype)
            out.weight[:old] = w
            out.weight[old:] = w.mean(0, keepdim=True)
            self.output = out
        self.cfg.vocab_size = new_size

    def check_tokens(self, tokens: Tensor) -> None:
        """Raise a clear error for token ids outside [0, vocab_size)."""
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size}); got min {int(tokens.min())}, max {int(tokens.max())}. "
                "Was the input made with a different tokenizer than this model's?"
            )

    # ---- streaming ----------------------------------------------------------------------------
    def _init_streaming_state(self, batch_size: int, max_len: Optional[int] = None, **_: Any) -> DecoderState:
        """``with model.streaming(batch, max_len=L)``: a static KV cache of L positions (default: context)."""
        max_len = max_len or self.cfg.max_seq_len
        if max_len > self.cfg.max_seq_len:
            raise ValueError(f"max_len={max_len} exceeds the model context model.max_seq_len={self.cfg.max_seq_len}")
        return DecoderState(batch_size, max_len, self.tok_embeddings.weight.device)

    @torch.no_grad()
    def set_streaming_offset(self, offset: Tensor) -> None:
        """Rewind each row's cache position to ``offset`` [batch] (e.g. drop unspoken tokens after barge-in)."""
        self._streaming_state.offset.copy_(offset)
        for layer in self.layers:
            layer.attention._streaming_state.truncate(self._streaming_state.offset)

    @property
    def streaming_offset(self) -> Tensor:
        """Tokens held in the KV cache per row, [batch] long (streaming mode only)."""
        return self._streaming_state.offset

    # ---- forward ------------------------------------------------------------------------------
    def embed(self, tokens: Tensor) -> Tensor:
        return self.tok_embeddings(tokens)

    def logits(self, hidden: Tensor) -> Tensor:
        """Vocabulary logits [B, S, V] from final hidden states [B, S, dim]."""
        weight = self.tok_embeddings.weight if self.output is None else self.output.weight
        return F.linear(hidden, weight)

    def forward(
        self,
        tokens: Optional[Tensor] = None,
        *,
        embeds: Optional[Tensor] = None,
        positions: Optional[Tensor] = None,
        mask: Optional[AttentionMask] = None,
        return_hidden: bool = False,
    ) -> Tensor:
        """Run the decoder.

        Args:
            tokens: [batch, seq] token ids, or
            embeds: [batch, seq, dim] input embeddings (e.g. text embeddings plus projected audio codewords).
            positions: [batch, seq] rotary positions; default arange (restarting per document is the
                caller's choice for packed rows). In streaming mode positions follow the cache.
            mask: attention mask description; default plain causal.
            return_hidden: return final normalised hidden states [batch, seq, dim] instead of logits.
        Returns:
            logits [batch, seq, vocab] (float32 under autocast is left to the caller), or hidden states.
        """
        if (tokens is None) == (embeds is None):
            raise ValueError("pass exactly one of tokens or embeds")
        x = self.embed(tokens) if embeds is None else embeds
        b, s, _ = x.shape
        mask = mask if mask is not None else AttentionMask()
        state: Optional[DecoderState] = self._streaming_state
        if state is not None:
            positions = state.offset[:, None] + torch.arange(s, device=x.device)
            if not x.is_cuda and not torch.compiler.is_compiling() and int(positions.max()) >= state.max_len:
                raise ValueError(
                    f"sequence of {int(positions.max()) + 1} tokens exceeds the KV cache ({state.max_len}); "
                    "shorten the prompt or raise max_len / model.max_seq_len"
                )
        elif positions is None:
            if s > self.cfg.max_seq_len:
                raise ValueError(f"sequence of {s} tokens exceeds model.max_seq_len={self.cfg.max_seq_len}")
            positions = torch.arange(s, device=x.device).expand(b, s)
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]
        for layer in self.layers:
            if self.activation_checkpointing and self.training:
                x = checkpoint(layer, x, cos, sin, mask, positions, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, positions)
        if state is not None:
            state.offset += s
        x = self.norm(x)
        return x if return_hidden else self.logits(x)
