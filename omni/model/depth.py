"""The depth decoder: predicts the K codebooks of one audio frame from the main decoder's state.

Moshi's RQ-Transformer idea: the main decoder runs once per audio frame (time), a small transformer
runs K steps *within* the frame (depth), so codebook k is predicted knowing codebooks 0..k-1.

Input of depth step k (all [N, depth_dim])::

    x_0 = W_in · context                          context = h_s + E(t_{s+1})   (main-decoder dim)
    x_k = W_in · context + C(k-1, c_{k-1})        k = 1..K-1

where h_s is the main decoder's hidden state at the position before the frame, t_{s+1} the frame's
text-stream token (inner monologue, predicted first, see omni/conversation.py), E the main token
embedding and C the code embedding of codebook k-1. The transformer is the project's one Llama
decoder (omni/model/decoder.py) with a K-entry context: its token table holds the K·codebook_size
code embeddings (id = k·codebook_size + code) and its untied output matrix holds the K per-codebook
heads, so step k reads rows [k·cb, (k+1)·cb). In streaming mode its KV cache spans the K steps of
one frame and is rewound to 0 for every frame.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from omni.model.decoder import Decoder, ModelConfig
from omni.streaming import StreamingModule

Tensor = torch.Tensor


class DepthDecoder(StreamingModule):
    """K-step transformer over the codebooks of one frame (see module docstring)."""

    def __init__(self, context_dim: int, num_codebooks: int, codebook_size: int, dim: int, n_layers: int,
                 n_heads: int, ffn_dim: int, attention: str = "auto", init_std: float = 0.02) -> None:
        super().__init__()
        self.n_codebooks, self.codebook_size = num_codebooks, codebook_size
        self.inp = nn.Linear(context_dim, dim, bias=False)
        nn.init.normal_(self.inp.weight, std=init_std)
        self.transformer = Decoder(ModelConfig(
            vocab_size=num_codebooks * codebook_size, dim=dim, n_layers=n_layers, n_heads=n_heads,
            n_kv_heads=n_heads, ffn_dim=ffn_dim, max_seq_len=num_codebooks, tie_embeddings=False,
            attention=attention, init_std=init_std,
        ))
        self.register_buffer("code_offsets", torch.arange(num_codebooks) * codebook_size, persistent=False)

    def _head(self, hidden: Tensor, k: int) -> Tensor:
        """Logits [..., codebook_size] of codebook k from depth hidden states [..., dim]."""
        return F.linear(hidden, self.transformer.output.weight[k * self.codebook_size : (k + 1) * self.codebook_size])

    def forward(self, context: Tensor, codes: Tensor) -> Tensor:
        """Teacher-forced logits.

        Args:
            context: [N, context_dim] (h_s + E(t_{s+1}) for N audio frames)
            codes: [N, K] the frames' codes (inputs shifted by one codebook)
        Returns:
            logits [N, K, codebook_size]
        """
        ctx = self.inp(context)[:, None]  # [N, 1, d]
        prev = self.transformer.embed(codes[:, :-1] + self.code_offsets[:-1])  # [N, K-1, d]
        x = ctx + F.pad(prev, (0, 0, 1, 0))  # step 0 sees the context only
        h = self.transformer(embeds=x, return_hidden=True)  # [N, K, d]
        w = self.transformer.output.weight.view(self.n_codebooks, self.codebook_size, -1)
        return torch.einsum("nkd,kcd->nkc", h, w)

    @torch.no_grad()
    def generate(self, context: Tensor, pick: Callable[[Tensor], Tensor],
                 step: Optional[Callable[..., Tensor]] = None) -> Tensor:
        """Sample the K codes of one frame per row, step by step over the depth KV cache.

        Args:
            context: [B, context_dim]
            pick: logits [B, codebook_size] -> codes [B] (the caller's sampler, so the RNG order is
                the caller's: text-stream token first, then codebooks 0..K-1)
            step: runs ``self.transformer`` on one position (default: the transformer itself; the
                compiled path passes omni.infer.compile.decode_step)
        Returns:
            codes [B, K] long
        """
        if not self.transformer.is_streaming:
            with self.transformer.streaming(context.shape[0]):
                return self.generate(context, pick, step)
        step = step or self.transformer
        self.transformer.set_streaming_offset(torch.zeros_like(self.transformer.streaming_offset))
        ctx = self.inp(context)[:, None]  # [B, 1, d]
        x, out = ctx, []
        for k in range(self.n_codebooks):
            h = step(embeds=x, return_hidden=True)[:, -1]
            code = pick(self._head(h, k))
            out.append(code)
            if k + 1 < self.n_codebooks:
                x = ctx + self.transformer.embed(code[:, None] + self.code_offsets[k])
        return torch.stack(out, 1)
