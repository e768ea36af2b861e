"""The ``rbr`` config section: spec, data sizes, grader / reward-model / PPO settings."""
from __future__ import annotations

from dataclasses import dataclass, field

from omni.config import ConfigError


@dataclass
class PPOConfig:
    """PPO as in the RBR paper: value head, clipped objective, KL penalty to the reference policy."""

    rollout_batch: int = 8  # prompts per PPO step
    samples_per_prompt: int = 1  # completions per prompt (>= 2 for advantage="group")
    # "gae": value head + GAE (the paper's PPO); "group": no value head, each sample's advantage is its
    # reward minus the mean of the other samples of the same prompt (RLOO), so per-prompt reward
    # offsets of the RM cancel. Both use the clipped objective and the KL penalty.
    advantage: str = "gae"
    # How "group" advantages are scaled: "batch" divides them by their RMS over the whole batch, so
    # prompts whose samples differ more in reward move the policy more; "prompt" divides each prompt's
    # by the std of its own samples' rewards (GRPO, Shao et al. 2024), so every prompt counts alike.
    group_scale: str = "batch"
    max_new_tokens: int = 32
    temperature: float = 0.8
    top_k: int = 50
    epochs: int = 2  # optimisation passes over each rollout batch
    clip: float = 0.2
    value_clip: float = 0.2
    kl_coef: float = 0.05  # per-token KL penalty to the reference policy, folded into the reward
    vf_coef: float = 0.5
    gamma: float = 1.0
    lam: float = 0.95
    train_layers: int = 4  # top decoder blocks of the policy that PPO updates (-1 = all)
    sample_every: int = 5  # log sample completions every N steps
    # Early stopping on a validation reward: this many train prompts (spread over the response types)
    # are held out of PPO; every `val_every` steps (and before the first) their greedy completions of
    # `val_new_tokens` tokens are scored with the same reward, and the best policy so far is saved to
    # OUT/best. 0 = no validation.
    val_prompts: int = 0
    val_every: int = 5
    val_new_tokens: int = 64

    def validate(self) -> None:
        if self.rollout_batch < 2:
            raise ConfigError("rbr.ppo.rollout_batch must be >= 2 (advantages are normalised over the batch)")
        if not 0 < self.clip < 1 or self.kl_coef < 0 or self.max_new_tokens <= 0 or self.temperature <= 0:
            raise ConfigError("rbr.ppo: need 0 < clip < 1, kl_coef >= 0, max_new_tokens > 0 and temperature > 0")
        if self.advantage not in ("gae", "group"):
            raise ConfigError(f"rbr.ppo.advantage must be 'gae' or 'group', got {self.advantage!r}")
        if self.group_scale not in ("batch", "prompt"):
            raise ConfigError(f"rbr.ppo.group_scale must be 'batch' or 'prompt', got {self.group_scale!r}")
        if self.advantage == "group" and self.samples_per_prompt < 2:
            raise ConfigError("rbr.ppo.advantage=group needs rbr.ppo.samples_per_prompt >= 2 (the baseline is the other samples)")
        if self.val_prompts < 0 or self.val_every <= 0 or self.val_new_tokens <= 0:
            raise ConfigError("rbr.ppo: need val_prompts >= 0, val_every > 0 and val_new_tokens > 0")


@dataclass
class RBRConfig:
    spec: str = ""  # behaviour spec YAML ("" = omni/align/spec/default.yaml)
    # Grader / reward model: keep the bottom `backbone_layers` blocks of the decoder (0 = all) and
    # train the top `train_layers` of those (-1 = all, 0 = the head alone); the rest stay frozen.
    backbone_layers: int = 0
    train_layers: int = 2
    # What graders and reward models read (omni.align.models.encode_pair; truncation is reported), and
    # the prompt / SFT-completion lengths for the policy.
    max_prompt_tokens: int = 256
    max_completion_tokens: int = 512
    grader_examples: int = 3000  # synthetic compositional examples for the trained grader
    sft_per_prompt: int = 4  # ideal completions per train prompt for the SFT warm-up (rbr-sft)
    policy: str = ""  # PPO starts from this run/step folder (e.g. the rbr-sft run); "" = model.init_from
    answers: str = ".cache/rbr/answers.jsonl"  # helpful answers written by the instruct model
    grader: str = ".cache/rbr/grader"  # trained grader run/step folder, or "prompted:PATH"
    reward_model: str = ".cache/rbr/rm"  # our RM run/step folder, or "hf:PATH" (sequence-classification RM)
    weights: str = ".cache/rbr/weights.json"  # fitted RBR weights (python -m omni.align fit)
    # Multiplies w·φ in R = R_rm + rbr_scale · w·φ: one number, or {response type: number} (types left out: 1).
    rbr_scale: float | dict[str, float] = 1.0
    ppo: PPOConfig = field(default_factory=PPOConfig)

    def validate(self) -> None:
        if self.train_layers < -1 or self.backbone_layers < 0 or self.max_prompt_tokens <= 0 or self.max_completion_tokens <= 0:
            raise ConfigError("rbr.train_layers must be >= -1, rbr.backbone_layers >= 0 and rbr.max_*_tokens > 0")
        scales = self.rbr_scale.values() if isinstance(self.rbr_scale, dict) else [self.rbr_scale]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in scales):
            raise ConfigError(f"rbr.rbr_scale must be a number >= 0 or a mapping response type -> number >= 0, got {self.rbr_scale!r}")
        self.ppo.validate()
