"""TRL for real: two GRPOTrainer steps on a tiny transformers Llama (built from a config, no
download) with omni's RBR reward beside a simple helpfulness reward (docs/rbr.md, "TRL")."""
import math

import torch

import omni.align.config  # noqa: F401  (registers the rbr section)
from omni.align.grader import TrainedGrader
from omni.align.models import build_head_model
from omni.align.reward import RBRReward
from omni.align.spec import load_spec
from omni.align.trl import RBRRewardFunc
from omni.align.weights import RBRWeights, initial_weights
from omni.config import config_from_dict
from omni.tokenizers.text import build_text_tokenizer

SPEC = load_spec()
WORDS = ["<pad>", "</s>", "<unk>", "sorry", "I", "can't", "help", "here", "is", "how", "to", "do", "it", "step", "one",
         "two", "please", "call", "988", "you", "are", "not", "alone", "make", "a", "bomb", "bake", "bread", "?", "."]


def tiny_policy(folder):
    """A random 1-layer transformers Llama and a word-level tokenizer saved to ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>").save_pretrained(folder)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                 pad_token_id=0, eos_token_id=1, bos_token_id=1)).save_pretrained(folder)


def random_grader():
    """A TrainedGrader on a tiny random omni backbone with a random head: varied, deterministic scores."""
    cfg = config_from_dict({"model": {"vocab_size": 49216, "dim": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1,
                                      "ffn_dim": 64, "max_seq_len": 256},
                            "tokenizer": {"kind": "gguf", "path": "smollm2-135m"}, "rbr": {}})
    torch.manual_seed(1)
    model = build_head_model(cfg, len(SPEC.learned), pretrained=False)
    torch.nn.init.normal_(model.head.weight, std=1.0)
    return TrainedGrader(model, build_text_tokenizer(cfg.tokenizer), SPEC, "random-tiny", max_prompt=64, max_completion=64)


def helpfulness(prompts, completions, **kw):
    """Longer answers score higher (a stand-in helpful-only reward; TRL sums it with the RBR one)."""
    return [min(len(c.split()), 8) / 8.0 for c in completions]


def test_grpo_trainer_two_steps_with_rbr_reward(tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    tiny_policy(tmp_path / "policy")
    weights = RBRWeights(SPEC, {t: initial_weights(SPEC, t) * 4 for t in SPEC.types})
    grader = random_grader()
    rbr = RBRRewardFunc(RBRReward(grader, weights), known_types={})
    data = Dataset.from_list([{"prompt": "make a bomb ?", "response_type": "hard_refuse"},
                              {"prompt": "bake bread ?", "response_type": "comply"}] * 4)
    args = GRPOConfig(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=8, learning_rate=0.05, logging_steps=1, report_to=[], save_strategy="no",
                      use_cpu=True, bf16=False, seed=0, temperature=1.0)
    trainer = GRPOTrainer(model=str(tmp_path / "policy"), reward_funcs=[helpfulness, rbr], args=args, train_dataset=data)
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    # Rewards flowed: the grader judged sampled completions and TRL logged both rewards at each step.
    assert len({c for _, _, c, _ in grader.cache}) >= 2
    logged = [h for h in trainer.state.log_history if "rewards/rbr/mean" in h]
    assert len(logged) == 2 and all(math.isfinite(h["rewards/rbr/mean"]) and "rewards/helpfulness/mean" in h for h in logged)
    changed = [k for k, v in trainer.model.named_parameters() if not torch.equal(v.detach(), before[k])]
    assert changed, "GRPO did not update any weight"
