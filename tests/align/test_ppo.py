"""PPO core on a tiny random policy with a planted rule-based reward; the rbr-ppo task end to end on
tiny models (validation hold-out, best policy, reward curve)."""
import argparse
import json
from collections import Counter

import pytest
import torch

import omni.align.config  # noqa: F401  (registers the rbr section)
from omni.align.config import PPOConfig
from omni.align.data import load_prompts
from omni.align.evaluate import reward_curves, run_label
from omni.align.ppo import PPO, RBRPPOTask, hold_out
from omni.align.spec import load_spec
from omni.align.tasks import GraderTask
from omni.align.weights import RBRWeights, initial_weights
from omni.config import ConfigError, config_from_dict
from omni.train.checkpoint import read_trainer_state, resolve_checkpoint
from omni.train.trainer import Trainer
from omni.model.decoder import Decoder, ModelConfig
from omni.align.models import pad_batch
from omni.infer.text import generate
from omni.model.sampling import SamplingConfig

TARGET = 7
SPEC = load_spec()


def planted_reward(prompt_ids, completion_ids):
    """Fraction of generated tokens equal to TARGET (a rule the policy must discover)."""
    r = torch.tensor([sum(t == TARGET for t in c) / max(1, len(c)) for c in completion_ids], dtype=torch.float)
    return r, {"planted": float(r.mean())}


@pytest.mark.slow  # 40 PPO steps on a tiny policy (~10 s each)
@pytest.mark.parametrize("advantage,k", [("gae", 1), ("group", 4)])
def test_ppo_raises_planted_reward(advantage, k):
    torch.manual_seed(0)
    policy = Decoder(ModelConfig(vocab_size=16, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len=64))
    cfg = PPOConfig(rollout_batch=16 // k, samples_per_prompt=k, advantage=advantage, max_new_tokens=8, temperature=1.0,
                    top_k=0, epochs=4, kl_coef=0.01, train_layers=-1)
    ppo = PPO(policy, cfg, lr=3e-3, seed=0)
    prompts = [[1 + i % 5, 2, 3] for i in range(cfg.rollout_batch)]
    rewards = [ppo.step(prompts, planted_reward)[0]["reward"] for _ in range(40)]
    before, after = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert after > before + 0.3, (before, after)


def test_ppo_keeps_reference_frozen_and_logs_kl():
    torch.manual_seed(0)
    policy = Decoder(ModelConfig(vocab_size=16, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len=64))
    ppo = PPO(policy, PPOConfig(rollout_batch=4, max_new_tokens=4, train_layers=1), lr=1e-2, stop_ids=[0])
    ref_before = {k: v.clone() for k, v in ppo.ref.state_dict().items()}
    stats, completions = ppo.step([[1, 2], [3], [4, 5, 6], [2]], planted_reward)
    assert len(completions) == 4 and {"kl", "pg_loss", "vf_loss", "planted"} <= set(stats)
    assert all(torch.equal(v, ppo.ref.state_dict()[k]) for k, v in ref_before.items())
    assert not policy.layers[0].attention.wq.weight.requires_grad  # only the top layer trains


def tiny_policy() -> Decoder:
    torch.manual_seed(0)
    return Decoder(ModelConfig(vocab_size=16, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len=64))


def test_first_epoch_ratio_is_one_and_logprobs_align_with_generation():
    policy = tiny_policy()
    ppo = PPO(policy, PPOConfig(rollout_batch=2, samples_per_prompt=2, max_new_tokens=6, temperature=0.7), lr=1e-2)
    stats, _ = ppo.step([[1, 2], [3, 4, 5]], planted_reward)
    assert stats["ratio0_err"] < 1e-5  # old log-probs are the first epoch's log-probs
    # Greedy completions must be the argmax of the distribution _forward reads them from (no off-by-one).
    prompts = [[1, 2], [3, 4, 5]]
    comps = generate(policy, prompts, 5, SamplingConfig(temperature=0.0))
    tokens, _ = pad_batch([p + c for p, c in zip(prompts, comps)])
    idx = torch.stack([torch.arange(len(p), len(p) + 5) for p in prompts])
    with torch.no_grad():
        logp, _ = ppo._forward(policy, tokens, idx, value=False)
        full = torch.log_softmax(policy(tokens).float() / 0.7, -1)  # [B, S, V]
    for i in range(2):
        best = full[i, idx[i] - 1].max(-1).values
        assert torch.allclose(logp[i], best, atol=1e-5)
        assert full[i, idx[i] - 1].argmax(-1).tolist() == comps[i]


def test_group_advantages_are_leave_one_out_and_need_no_value_head():
    ppo = PPO(tiny_policy(), PPOConfig(samples_per_prompt=2, advantage="group", kl_coef=0.0), lr=1e-2)
    scores = torch.tensor([1.0, 3.0, -5.0, -5.0])  # prompt 0: second sample better; prompt 1: a tie
    mask = torch.ones(4, 3)
    adv, _ = ppo._advantages(scores, torch.zeros(4, 3), mask, torch.zeros(4, 3))
    assert adv[0, 0] < 0 < adv[1, 0] and torch.allclose(adv[0] + adv[1], torch.zeros(3))
    assert torch.equal(adv[2], torch.zeros(3)) and torch.equal(adv[3], torch.zeros(3))  # offsets cancel
    assert all(p is not ppo.value_head.weight for g in ppo.opt.param_groups for p in g["params"])


def test_group_advantages_scaled_per_prompt_count_every_prompt_alike():
    scores = torch.tensor([0.0, 0.1, 0.0, 10.0])  # prompt 0: a small reward gap; prompt 1: a large one
    mask, zeros = torch.ones(4, 3), torch.zeros(4, 3)
    by_batch = PPO(tiny_policy(), PPOConfig(samples_per_prompt=2, advantage="group", kl_coef=0.0), lr=1e-2)
    adv, _ = by_batch._advantages(scores, zeros, mask, zeros)
    assert adv[1, 0] < 0.02 * adv[3, 0]  # the large gap drowns the small one
    by_prompt = PPO(tiny_policy(), PPOConfig(samples_per_prompt=2, advantage="group", group_scale="prompt", kl_coef=0.0), lr=1e-2)
    adv, _ = by_prompt._advantages(scores, zeros, mask, zeros)
    assert torch.allclose(adv[1], adv[3], rtol=1e-2) and torch.allclose(adv[0], -adv[1])  # both prompts alike
    with pytest.raises(ConfigError, match="group_scale"):
        PPOConfig(group_scale="token").validate()


def test_hold_out_spreads_validation_prompts_over_types():
    prompts = load_prompts("train")
    train, val = hold_out(prompts, 6, seed=0)
    assert len(val) == 6 and len(train) == len(prompts) - 6 and not set(val) & set(train)
    assert Counter(p.type for p in val) == {"comply": 2, "hard_refuse": 2, "soft_refuse": 2}
    assert hold_out(prompts, 6, seed=0) == (train, val) and hold_out(prompts, 0) == (prompts, [])
    with pytest.raises(ValueError, match="leaves 1 of"):
        hold_out(prompts, len(prompts) - 1)


@pytest.mark.slow  # trains a tiny grader, then 2 PPO steps of a tiny policy (~15 s)
def test_rbr_ppo_task_validates_keeps_the_best_policy_and_logs_the_reward_curve(tmp_path):
    tiny = {"vocab_size": 49216, "dim": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "ffn_dim": 64, "max_seq_len": 256}
    tokenizer = {"kind": "gguf", "path": "smollm2-135m"}
    grader_cfg = config_from_dict({
        "task": "rbr-grader", "model": tiny, "tokenizer": tokenizer,
        "train": {"out_dir": str(tmp_path / "grader"), "steps": 5, "batch_size": 16, "lr": 3e-3, "warmup_steps": 1,
                  "log_every": 1000, "ckpt_every": 1000, "tensorboard": False},
        "rbr": {"train_layers": -1, "max_prompt_tokens": 64, "max_completion_tokens": 64, "grader_examples": 80,
                "answers": "/nonexistent"}})
    Trainer(grader_cfg, GraderTask(), argparse.Namespace()).fit()
    RBRWeights(SPEC, {t: initial_weights(SPEC, t) for t in SPEC.types}).save(tmp_path / "weights.json")
    out = tmp_path / "ppo"
    cfg = config_from_dict({
        "task": "rbr-ppo", "model": tiny, "tokenizer": tokenizer,
        "train": {"out_dir": str(out), "steps": 2, "lr": 1e-3, "ckpt_every": 2, "log_every": 1000, "tensorboard": False},
        "rbr": {"grader": str(tmp_path / "grader"), "reward_model": "", "weights": str(tmp_path / "weights.json"),
                "max_prompt_tokens": 64,
                "ppo": {"advantage": "group", "rollout_batch": 2, "samples_per_prompt": 2, "max_new_tokens": 4,
                        "train_layers": -1, "val_prompts": 3, "val_every": 1, "val_new_tokens": 4}}})
    RBRPPOTask().run(cfg, argparse.Namespace())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val_reward" in r]
    assert [r["step"] for r in val] == [0, 1, 2] and [r["step"] for r in rows if "reward" in r] == [1, 2]
    best = max(val, key=lambda r: r["val_reward"])  # the first of equal rewards is kept
    assert best.get("best") and read_trainer_state(resolve_checkpoint(out / "best"))["step"] == best["step"]
    curves = reward_curves([out], tmp_path / "curve.png")
    assert curves["ppo"]["val_steps"] == [0, 1, 2] and len(curves["ppo"]["reward"]) == 2
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG" and run_label(out / "best") == "ppo/best"
