"""PPO core on a tiny random policy with a planted rule-based reward."""
import pytest
import torch

from omni.align.config import PPOConfig
from omni.align.ppo import PPO
from omni.model.decoder import Decoder, ModelConfig
from omni.align.models import pad_batch
from omni.infer.text import generate
from omni.model.sampling import SamplingConfig

TARGET = 7


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
