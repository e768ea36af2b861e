"""The ``lm`` task: next-token prediction on packed text rows (omni/train/packing.py).

Each row holds ``seq_len + 1`` tokens; inputs are the first ``seq_len``, targets the last ``seq_len``.
Documents in a row never attend to each other (``AttentionMask(document_ids=...)``) and their rotary
positions restart at 0. Every position has a target (a document's final <|eos|> predicts the next
document's <|bos|>), so all rows weigh the same and a mean over ranks equals the global mean.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from omni.config import Config
from omni.infer.text import generate
from omni.model.attention import AttentionMask
from omni.model.build import build_model
from omni.model.sampling import SamplingConfig
from omni.tokenizers.text import build_text_tokenizer
from omni.train.packing import PackedDataset
from omni.train.task import Task, register_task

Tensor = torch.Tensor


def lm_flops_per_token(model: nn.Module, cfg: Config) -> float:
    """Training FLOPs per token: 6·N + 6·n_layers·seq_len·dim.

    N counts parameters used in matmuls: all but the embedding table, plus the logit projection
    (vocab x dim) even when it shares the table. The second term is causal attention (QK^T and AV,
    2·seq_len·dim per layer forward on average, x3 for forward + backward).
    """
    m = model.cfg  # the decoder's own shape: the omni model's vocabulary is not in cfg.model
    n = sum(p.numel() for name, p in model.named_parameters() if "tok_embeddings" not in name)
    if m.tie_embeddings:
        n += m.vocab_size * m.dim
    return 6.0 * n + 6.0 * m.n_layers * cfg.data.seq_len * m.dim


@register_task("lm")
class LMTask(Task):
    """Language modelling on a corpus built by data/build_text.py."""

    def build_model(self, cfg: Config) -> nn.Module:
        if cfg.data.seq_len > cfg.model.max_seq_len:
            raise ValueError(f"data.seq_len={cfg.data.seq_len} exceeds model.max_seq_len={cfg.model.max_seq_len}")
        return build_model(cfg)

    def build_dataset(self, cfg: Config, split: str = "train") -> torch.utils.data.Dataset:
        # A missing corpus raises FileNotFoundError naming data/build_text.py (PackedDataset).
        ds = PackedDataset(cfg.data.path, split, cfg.data.seq_len)
        if ds.vocab_size > cfg.model.vocab_size:
            raise ValueError(f"the corpus at {cfg.data.path} uses {ds.vocab_size} token ids but "
                             f"model.vocab_size={cfg.model.vocab_size}: raise model.vocab_size or rebuild the corpus")
        return ds

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Mean cross-entropy over all targets; metric: top-1 next-token accuracy."""
        tokens = batch["tokens"]  # [B, S+1]
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        mask = AttentionMask(document_ids=batch["document_ids"][:, :-1])
        logits = model(inputs, positions=batch["positions"][:, :-1], mask=mask)  # [B, S, V]
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        accuracy = (logits.detach().argmax(-1) == targets).float().mean()
        return loss, {"accuracy": float(accuracy)}

    def tokens_in(self, batch: dict[str, Tensor]) -> int:
        return batch["tokens"].shape[0] * (batch["tokens"].shape[1] - 1)

    def flops_per_token(self, model: nn.Module, cfg: Config) -> float:
        return lm_flops_per_token(model, cfg)

    def on_save(self, model: nn.Module, cfg: Config, folder: str) -> None:
        build_text_tokenizer(cfg.tokenizer).save(Path(folder) / "tokenizer")

    def demo(self, model: nn.Module, cfg: Config, prompt: str = "ROMEO:\n", max_new_tokens: int = 80) -> Optional[str]:
        """Sampled continuation of ``prompt`` (temperature 0.8, top-k 50)."""
        tok = build_text_tokenizer(cfg.tokenizer)
        was_training = model.training
        model.eval()
        ids = [tok.bos_id, *tok.encode(prompt)]
        out = generate(model, [ids], max_new_tokens, SamplingConfig(temperature=0.8, top_k=50),
                       stop_ids=[tok.eos_id], generator=torch.Generator(device="cpu").manual_seed(0),
                       vocab_size=tok.vocab_size)
        model.train(was_training)
        return prompt + tok.decode(out[0])
