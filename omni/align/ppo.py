"""PPO with Rule-Based Rewards (``train.py --task rbr-ppo``), as in the RBR paper: a value head on
the policy, the clipped surrogate objective, a per-token KL penalty to the frozen reference policy
folded into the reward, GAE, and advantages normalised over the batch (``advantage=gae``); or, with
``advantage=group``, no value head: k samples per prompt and leave-one-out (RLOO) advantages, still
with the clipped objective and the KL penalty (the configuration that improves safety on CPU,
docs/rbr.md). With ``rbr.ppo.val_prompts``, some train prompts are held out and the policy with the
best greedy validation reward is kept (early stopping).

    python train.py --task rbr-ppo --config configs/rbr-ppo-135m.yaml

The core (:class:`PPO`) works on token ids with any reward function, so it is tested on a tiny
policy with a planted reward; the task wires in the RBR reward (grader + fitted weights + RM).
"""
from __future__ import annotations

import argparse
import copy
import json
import random
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from omni.align.config import PPOConfig
from omni.align.data import Prompt, load_prompts
from omni.align.grader import load_grader
from omni.align.models import freeze_below, pad_batch
from omni.align.reward import RBRReward, RewardModel
from omni.align.rollout import complete, prompt_ids, stop_ids
from omni.align.spec import DEFAULT_SPEC, load_spec
from omni.align.weights import RBRWeights
from omni.config import Config, save_config
from omni.infer.text import generate
from omni.io.tensors import save_tensors
from omni.model.build import build_model
from omni.model.decoder import Decoder
from omni.model.sampling import SamplingConfig
from omni.tokenizers.text import build_text_tokenizer
from omni.train.checkpoint import begin_save, finish_save, load_model_state
from omni.train.task import Task, register_task

Tensor = torch.Tensor
# reward_fn(prompt_ids, completion_ids) -> (scores [B], parts to log {name: float})
RewardFn = Callable[[list[list[int]], list[list[int]]], tuple[Tensor, dict[str, float]]]


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x − mean) / std over the entries where mask is 1 (advantage normalisation)."""
    mean = (x * mask).sum() / mask.sum()
    var = ((x - mean) ** 2 * mask).sum() / mask.sum()
    return (x - mean) * torch.rsqrt(var + eps) * mask


class PPO:
    """One PPO learner: ``step(prompt_ids, reward_fn)`` = rollout, score, ``epochs`` of updates.

    Log-probs are those of the distribution the rollout samples from (logits / temperature), so the
    importance ratio is exactly 1 on the first epoch. The value head reads detached hidden states:
    its regression must not move the policy's blocks (and must not dominate the gradient clip)."""

    def __init__(self, policy: Decoder, cfg: PPOConfig, lr: float, stop_ids: Sequence[int] = (), grad_clip: float = 1.0,
                 seed: int = 0, vocab_size: int | None = None) -> None:
        """``vocab_size``: the tokenizer's (ids above it, the model's padding, are never sampled and
        carry no probability in the log-probs either)."""
        self.policy, self.cfg, self.stop_ids, self.grad_clip = policy, cfg, list(stop_ids), grad_clip
        self.vocab_size = vocab_size or policy.vocab_size
        self.ref = copy.deepcopy(policy).eval().requires_grad_(False)
        freeze_below(policy, cfg.train_layers)
        self.value_head = nn.Linear(policy.cfg.dim, 1).to(policy.tok_embeddings.weight.device)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        self.policy_params = [p for p in policy.parameters() if p.requires_grad]
        params = self.policy_params + (list(self.value_head.parameters()) if cfg.advantage == "gae" else [])
        self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        self.sampling = SamplingConfig(temperature=cfg.temperature, top_k=cfg.top_k)
        self.gen = torch.Generator(device=policy.tok_embeddings.weight.device).manual_seed(seed)

    def _forward(self, model: Decoder, tokens: Tensor, idx: Tensor, value: bool) -> tuple[Tensor, Tensor | None]:
        """Log-probs [B, T] of the completion tokens at positions idx (predicted from idx − 1, at the
        sampling temperature) and values [B, T]."""
        h = model(tokens, return_hidden=True)  # [B, S, D]
        pred = h.gather(1, (idx - 1).unsqueeze(-1).expand(-1, -1, h.shape[-1]))  # [B, T, D]
        logits = model.logits(pred)[..., : self.vocab_size].float() / self.cfg.temperature
        logp = F.log_softmax(logits, -1).gather(-1, tokens.gather(1, idx).unsqueeze(-1)).squeeze(-1)
        return logp, (self.value_head(pred.detach().float()).squeeze(-1) if value else None)

    def _advantages(self, scores: Tensor, kl: Tensor, mask: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Token advantages [N, T] and value targets [N, T] from sequence scores [N], per-token KL [N, T]."""
        c, n = self.cfg, len(scores)
        if c.advantage == "group":  # RLOO: the sequence reward (KL folded in) minus the other samples' mean
            r = (scores - c.kl_coef * kl.sum(1)).view(-1, c.samples_per_prompt)  # [prompts, k]
            adv = r - (r.sum(1, keepdim=True) - r) / (c.samples_per_prompt - 1)
            if c.group_scale == "prompt":
                adv = adv / (r.std(1, keepdim=True) + 1e-4)
            adv = adv.reshape(n, 1) * mask
            if c.group_scale == "batch":
                adv = adv * torch.rsqrt((adv ** 2 * mask).sum() / mask.sum() + 1e-8)
            return adv, torch.zeros_like(mask)
        rewards = -c.kl_coef * kl
        last = (mask.sum(1).long() - 1).clamp_min(0)
        rewards[torch.arange(n), last] += scores  # the sequence reward lands on its final token
        adv, gae = torch.zeros_like(rewards), torch.zeros(n, device=rewards.device)
        t_max = mask.shape[1]
        for t in reversed(range(t_max)):  # GAE(γ, λ) over completion tokens
            nxt = values[:, t + 1] * mask[:, t + 1] if t + 1 < t_max else torch.zeros_like(gae)
            delta = rewards[:, t] + c.gamma * nxt - values[:, t]
            gae = (delta + c.gamma * c.lam * gae) * mask[:, t]
            adv[:, t] = gae
        return masked_whiten(adv, mask), adv + values

    def step(self, prompt_ids: list[list[int]], reward_fn: RewardFn) -> tuple[dict[str, float], list[list[int]]]:
        """One PPO iteration over ``samples_per_prompt`` completions of each prompt (prompt-major order:
        row i·k + j is sample j of prompt i; reward_fn sees the repeated prompts). Returns logged
        statistics and the sampled completions (token ids)."""
        c = self.cfg
        prompt_ids = [p for p in prompt_ids for _ in range(c.samples_per_prompt)]
        completions = generate(self.policy, prompt_ids, c.max_new_tokens, self.sampling, self.stop_ids, self.gen,
                               vocab_size=self.vocab_size)
        scores, parts = reward_fn(prompt_ids, completions)
        # One row per sample: prompt + completion (an empty completion keeps its prompt's last token
        # as a masked placeholder so shapes stay rectangular).
        seqs = [p + (comp or [p[-1]]) for p, comp in zip(prompt_ids, completions)]
        tokens, _ = pad_batch(seqs)
        t_max = max(1, max(len(comp) for comp in completions))
        idx = torch.zeros(len(seqs), t_max, dtype=torch.long)
        mask = torch.zeros(len(seqs), t_max)
        for i, (p, comp) in enumerate(zip(prompt_ids, completions)):
            n = max(1, len(comp))
            idx[i, :n] = torch.arange(len(p), len(p) + n)
            idx[i, n:] = len(p) + n - 1
            mask[i, : len(comp)] = 1.0
        dev = self.policy.tok_embeddings.weight.device
        tokens, idx, mask, scores = tokens.to(dev), idx.to(dev), mask.to(dev), scores.to(dev).float()
        with torch.no_grad():
            old_logp, old_values = self._forward(self.policy, tokens, idx, value=True)
            ref_logp, _ = self._forward(self.ref, tokens, idx, value=False)
            kl = (old_logp - ref_logp) * mask  # per-token estimate of KL(policy || ref)
            adv, returns = self._advantages(scores, kl, mask, old_values)
        base = {"reward": float(scores.mean()), "kl": float(kl.sum(1).mean()),
                "completion_tokens": float(mask.sum(1).mean()), **parts}
        if mask.sum() == 0:  # every completion empty: nothing to learn from this batch
            return base, completions
        stats: dict[str, float] = {}
        n = mask.sum()
        for epoch in range(c.epochs):
            logp, values = self._forward(self.policy, tokens, idx, value=True)
            ratio = torch.exp(logp - old_logp)
            if epoch == 0:  # same weights, same tokens: must be exactly 1 (alignment check)
                stats["ratio0_err"] = float(((ratio.detach() - 1).abs() * mask).max())
            pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - c.clip, 1 + c.clip))
            pg_loss = (pg * mask).sum() / n
            loss = pg_loss
            if c.advantage == "gae":
                v_clipped = old_values + (values - old_values).clamp(-c.value_clip, c.value_clip)
                vf = torch.max((values - returns) ** 2, (v_clipped - returns) ** 2)
                vf_loss = 0.5 * (vf * mask).sum() / n
                loss = loss + c.vf_coef * vf_loss
                stats["vf_loss"] = float(vf_loss.detach())
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            # Clip the policy's gradient alone: the value head's must not shrink it.
            torch.nn.utils.clip_grad_norm_(self.policy_params, self.grad_clip)
            if c.advantage == "gae":
                torch.nn.utils.clip_grad_norm_(self.value_head.parameters(), self.grad_clip)
            self.opt.step()
            stats.update(pg_loss=float(pg_loss.detach()),
                         clipfrac=float((((ratio - 1).abs() > c.clip).float() * mask).sum() / n))
        return {**base, **stats}, completions


def hold_out(prompts: Sequence[Prompt], n: int, seed: int = 0) -> tuple[list[Prompt], list[Prompt]]:
    """(train, val): ``n`` prompts held out for validation, taken in turn from each response type
    (each type shuffled with ``seed``), so every type is represented. Raises ValueError if fewer than
    2 prompts would be left to train on."""
    if len(prompts) - n < 2:
        raise ValueError(f"rbr.ppo.val_prompts={n} leaves {len(prompts) - n} of {len(prompts)} prompts to train on; use fewer")
    rng = random.Random(seed)
    pools: dict[str, list[Prompt]] = {}
    for p in prompts:
        pools.setdefault(p.type, []).append(p)
    for pool in pools.values():
        rng.shuffle(pool)
    val: list[Prompt] = []
    while len(val) < n:
        for pool in pools.values():
            if pool and len(val) < n:
                val.append(pool.pop())
    return [p for p in prompts if p not in val], val


def reward_means(parts: dict[str, Tensor], prefix: str) -> dict[str, float]:
    """``{prefix}_rm``: the mean reward-model term of a batch's ``RBRReward`` parts; ``{prefix}_rbr``: the
    mean RBR term over the rows that have one (NaN where a row's type has none), 0 if none does."""
    rbr = parts["rbr"][~parts["rbr"].isnan()]
    return {f"{prefix}_rm": float(parts["rm"].mean()), f"{prefix}_rbr": float(rbr.mean()) if len(rbr) else 0.0}


@register_task("rbr-ppo")
class RBRPPOTask(Task):
    """PPO of the policy (cfg.model, e.g. SmolLM2-135M-Instruct) against R = R_rm + w·φ."""

    own_loop = True

    def run(self, cfg: Config, args: argparse.Namespace) -> None:
        r, t = cfg.section("rbr"), cfg.train
        torch.manual_seed(t.seed)
        out = Path(t.out_dir)
        if out.exists() and any(out.iterdir()) and not getattr(args, "overwrite", False):
            raise FileExistsError(f"{out} already holds a run; pass --overwrite or choose another train.out_dir")
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        spec = load_spec(r.spec or DEFAULT_SPEC)
        tok = build_text_tokenizer(cfg.tokenizer)
        policy = build_model(cfg)
        if r.policy:  # e.g. the SFT warm-up; it is also the KL reference
            policy.load_state_dict(load_model_state(r.policy)[1])
        reward = RBRReward(load_grader(spec, r.grader), RBRWeights.load(r.weights, spec),
                           RewardModel.load(r.reward_model) if r.reward_model else None, r.rbr_scale)
        ppo = PPO(policy, r.ppo, t.lr, stop_ids(tok), t.grad_clip, t.seed, vocab_size=tok.vocab_size)
        prompts, val = hold_out(load_prompts("train"), r.ppo.val_prompts, t.seed)
        rng = random.Random(t.seed)
        stops = set(stop_ids(tok))
        batch_prompts: list = []

        def reward_fn(p_ids, c_ids):
            rows = [p for p in batch_prompts for _ in range(r.ppo.samples_per_prompt)]  # step's prompt-major order
            texts = [tok.decode([x for x in c if x not in stops]).strip() for c in c_ids]
            parts = reward([p.prompt for p in rows], texts, [p.type for p in rows])
            return parts["total"], reward_means(parts, "reward")

        log = open(out / "metrics.jsonl", "w")
        best = float("-inf")

        def validate(step: int) -> None:
            """Greedy completions of the held-out prompts, scored like the rollouts; keeps the best policy."""
            nonlocal best
            texts = complete(policy, tok, [p.prompt for p in val], r.ppo.val_new_tokens, r.max_prompt_tokens)
            parts = reward([p.prompt for p in val], texts, [p.type for p in val])
            record = {"step": step, "val_reward": float(parts["total"].mean()), **reward_means(parts, "val_reward")}
            if record["val_reward"] > best:
                best = record["val_reward"]
                save_policy(policy, cfg, out / "best", step)
                record["best"] = True
            log.write(json.dumps(record) + "\n")
            log.flush()
            tqdm.write(" ".join(f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float)))

        if val:
            validate(0)
        for step in tqdm(range(1, t.steps + 1), desc="rbr-ppo"):
            batch_prompts = rng.sample(prompts, min(r.ppo.rollout_batch, len(prompts)))
            stats, completions = ppo.step(prompt_ids(tok, [p.prompt for p in batch_prompts], r.max_prompt_tokens), reward_fn)
            record = {"step": step, **stats}
            if step % r.ppo.sample_every == 0 or step == 1:
                record["samples"] = [{"prompt": p.prompt, "type": p.type,
                                      "completion": tok.decode([x for x in c if x not in stops])}
                                     for p, c in list(zip(batch_prompts, completions[::r.ppo.samples_per_prompt]))[:3]]
            log.write(json.dumps(record) + "\n")
            log.flush()
            if step % t.log_every == 0 or step == 1:
                tqdm.write(" ".join(f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float)))
                for s in record.get("samples", []):
                    tqdm.write(f"  [{s['type']}] {s['prompt']} -> {s['completion'][:160]!r}")
            if step % t.ckpt_every == 0 or step == t.steps:  # a slow CPU run stays usable if stopped early
                save_policy(policy, cfg, out, step, t.keep_checkpoints)
            if val and step % r.ppo.val_every == 0:
                validate(step)
        log.close()


def save_policy(policy: Decoder, cfg: Config, run_dir: Path, step: int, keep: int = 1) -> Path:
    """A checkpoint folder load_model_state / omni.load_model read (model weights + config)."""
    tmp = begin_save(run_dir, step)
    save_tensors(policy.state_dict(), tmp / "model.safetensors")
    save_config(cfg, tmp / "config.yaml")
    (tmp / "trainer.json").write_text(json.dumps({"step": step, "task": "rbr-ppo"}))
    return finish_save(run_dir, step, keep=keep)
