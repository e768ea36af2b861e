"""train.py tasks for the RBR models trained as "loss over a dataset":

* ``rbr-grader`` — backbone + multi-label proposition head on compositional synthetic completions
  (binary cross-entropy per proposition);
* ``rbr-rm`` — helpful-only Bradley–Terry reward model: backbone + scalar head on (prompt, chosen,
  rejected) pairs, loss −log σ(r_chosen − r_rejected);
* ``rbr-sft`` — supervised warm-up of the policy on the spec's ideal completions (the synthetic
  comparison data's ideal ones), cross-entropy on completion tokens, before PPO. A policy that never
  refuses almost never samples a refusal, so PPO alone has nothing to reinforce (as in the paper,
  RL starts from an SFT model).

    python train.py --config configs/rbr-grader-135m.yaml
    python train.py --config configs/rbr-rm-135m.yaml
    python train.py --config configs/rbr-sft-135m.yaml
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from omni.align.config import RBRConfig
from omni.align.data import load_prompts, read_jsonl
from omni.align.models import build_head_model, encode_pair, freeze_below, pad_batch
from omni.align.rollout import prompt_ids, stop_ids
from omni.align.spec import DEFAULT_SPEC, load_spec
from omni.align.synth import grader_examples, preference_pairs, sft_examples
from omni.config import Config
from omni.model.build import build_model
from omni.tokenizers.text import build_text_tokenizer
from omni.train.task import Task, register_task

Tensor = torch.Tensor


def load_answers(path: str | Path) -> dict[str, list[str]]:
    """Helpful answers by prompt, written by ``python -m omni.align answers`` ({} if the file is absent)."""
    out: dict[str, list[str]] = {}
    if Path(path).exists():
        for r in read_jsonl(path):
            out.setdefault(r["prompt"], []).append(r["answer"])
    return out


class _RBRTask(Task):
    """Shared parts: tokenizer, sequence encoding, padding collate."""

    def _setup(self, cfg: Config) -> tuple[RBRConfig, Any]:
        r = cfg.section("rbr")
        self.rbr, self.spec = r, load_spec(r.spec or DEFAULT_SPEC)
        self.tokenizer = build_text_tokenizer(cfg.tokenizer)
        return r, self.tokenizer

    def _encode(self, prompt: str, completion: str) -> list[int]:
        return encode_pair(self.tokenizer, prompt, completion, self.rbr.max_prompt_tokens, self.rbr.max_completion_tokens).ids

    def on_save(self, model: nn.Module, cfg: Config, folder: str) -> None:
        self.tokenizer.save(Path(folder) / "tokenizer")


@register_task("rbr-grader")
class GraderTask(_RBRTask):
    def build_model(self, cfg: Config) -> nn.Module:
        return build_head_model(cfg, len(load_spec(cfg.section("rbr").spec or DEFAULT_SPEC).learned))

    def build_dataset(self, cfg: Config, split: str = "train") -> list[dict[str, Any]]:
        r, _ = self._setup(cfg)
        examples = grader_examples(self.spec, load_prompts("train"), r.grader_examples, load_answers(r.answers), cfg.train.seed)
        return [{"ids": self._encode(g.prompt, g.completion),
                 "labels": torch.tensor([float(q in g.labels) for q in self.spec.learned])} for g in examples]

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Tensor]:
        tokens, lengths = pad_batch([it["ids"] for it in items])
        return {"tokens": tokens, "lengths": lengths, "labels": torch.stack([it["labels"] for it in items])}

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Mean binary cross-entropy over propositions; metric: per-label accuracy at 0.5."""
        logits = model(batch["tokens"], batch["lengths"])  # [B, P]
        loss = F.binary_cross_entropy_with_logits(logits, batch["labels"])
        acc = ((logits.detach() > 0).float() == batch["labels"]).float().mean()
        return loss, {"accuracy": float(acc)}

    def tokens_in(self, batch: dict[str, Tensor]) -> int:
        return int(batch["lengths"].sum())


@register_task("rbr-rm")
class RewardModelTask(_RBRTask):
    def build_model(self, cfg: Config) -> nn.Module:
        return build_head_model(cfg, 1)

    def build_dataset(self, cfg: Config, split: str = "train") -> list[dict[str, Any]]:
        r, _ = self._setup(cfg)
        answers = load_answers(r.answers)
        if not answers:
            raise FileNotFoundError(f"no helpful answers at {r.answers}; write them with `python -m omni.align answers`")
        pairs = preference_pairs([p for p in load_prompts("train") if p.type == "comply"], answers, cfg.train.seed)
        return [{"chosen": self._encode(p, c), "rejected": self._encode(p, j)} for p, c, j in pairs]

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Tensor]:
        # Chosen rows first, rejected rows second: one forward scores both.
        tokens, lengths = pad_batch([it["chosen"] for it in items] + [it["rejected"] for it in items])
        return {"tokens": tokens, "lengths": lengths}

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Bradley–Terry: −log σ(r_chosen − r_rejected); metric: pair accuracy."""
        r = model(batch["tokens"], batch["lengths"]).squeeze(-1)  # [2B]
        chosen, rejected = r.chunk(2)
        margin = chosen - rejected
        return -F.logsigmoid(margin).mean(), {"accuracy": float((margin.detach() > 0).float().mean())}

    def tokens_in(self, batch: dict[str, Tensor]) -> int:
        return int(batch["lengths"].sum())


@register_task("rbr-sft")
class SFTTask(_RBRTask):
    def build_model(self, cfg: Config) -> nn.Module:
        model = build_model(cfg)
        freeze_below(model, cfg.section("rbr").train_layers)
        return model

    def build_dataset(self, cfg: Config, split: str = "train") -> list[dict[str, Any]]:
        r, tok = self._setup(cfg)
        end = stop_ids(tok)[-1]  # the chat template's end of turn
        examples = sft_examples(self.spec, load_prompts("train"), r.sft_per_prompt, load_answers(r.answers), cfg.train.seed)
        out = []
        for prompt, completion in examples:
            p = prompt_ids(tok, [prompt], r.max_prompt_tokens)[0]
            c = tok.encode(completion)[: r.max_completion_tokens] + [end]
            out.append({"ids": p + c, "n_prompt": len(p)})
        return out

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Tensor]:
        tokens, lengths = pad_batch([it["ids"] for it in items])
        targets = torch.full_like(tokens, -100)  # loss only on completion tokens
        for i, it in enumerate(items):
            targets[i, it["n_prompt"] - 1: len(it["ids"]) - 1] = tokens[i, it["n_prompt"]: len(it["ids"])]
        return {"tokens": tokens, "targets": targets, "lengths": lengths}

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy of the completion tokens (mean over the batch's completion tokens)."""
        return self.step_loss(model, batch, self.targets(batch))

    def targets(self, batch: dict[str, Tensor]) -> dict[str, float]:
        return {"completion": float((batch["targets"] != -100).sum())}  # completions differ in length

    def step_loss(self, model: nn.Module, batch: dict[str, Tensor], totals: dict[str, float],
                  phase: Optional[str] = None) -> tuple[Tensor, dict[str, float]]:
        logits = model(batch["tokens"])  # [B, S, V]
        ce = F.cross_entropy(logits.float().flatten(0, 1), batch["targets"].flatten(), ignore_index=-100, reduction="sum")
        return ce / max(totals["completion"], 1.0), {}

    def tokens_in(self, batch: dict[str, Tensor]) -> int:
        return int(batch["lengths"].sum())
