"""SmolLM2-135M from its GGUF: metadata, logits equal to transformers', sensible greedy answers,
vocabulary extension that leaves text logits untouched, shape checks of build_model."""
import copy
import dataclasses

import pytest
import torch

from omni.infer.text import TextGenerator, generate
from omni.config import ConfigError, load_config
from omni.model.build import build_model
from omni.io.gguf import smollm2_path
from omni.model.build import load_pretrained

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    return", "1, 2, 3, 5, 8, 13,",
           "<|im_start|>user\nWho wrote Hamlet?<|im_end|>\n<|im_start|>assistant\n"]
# fp32 on both sides; the only differences are summation order (measured: max 3.6e-5 on logits up to ~36).
PARITY_ATOL = 1e-4


@pytest.fixture(scope="module")
def smollm2():
    return load_pretrained("smollm2-135m")


def test_config_from_metadata(smollm2):
    model, _ = smollm2
    cfg = model.cfg
    assert (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_dim) == (30, 576, 9, 3, 1536)
    assert (cfg.vocab_size, cfg.max_seq_len, cfg.rope_theta, cfg.norm_eps) == (49152, 8192, 100000.0, 1e-5)
    assert cfg.tie_embeddings and model.output is None
    assert 134e6 < model.num_params() < 135e6


@pytest.mark.slow
def test_logits_match_transformers(smollm2):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    model, tok = smollm2
    path = smollm2_path()
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                            dtype=torch.float32).eval()
    worst = 0.0
    with torch.no_grad():
        for text in PROMPTS:
            ids = torch.tensor([tok.encode(text)])
            ours, theirs = model(ids), ref(ids).logits
            worst = max(worst, (ours - theirs).abs().max().item())
            assert torch.equal(ours[0].argmax(-1), theirs[0].argmax(-1))
    assert worst < PARITY_ATOL, f"max |logit difference| {worst:.2e}"


def test_greedy_chat_answers(smollm2):
    model, tok = smollm2
    gen = TextGenerator(model, tok)
    answer = gen.chat([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=12)
    assert "Paris" in answer
    assert "<|im_end|>" not in answer  # generation stopped at the end of the turn


def test_cached_decoding_matches_full_forward(smollm2):
    """Greedy generation through the KV cache picks the tokens a full forward pass would."""
    model, tok = smollm2
    ids = tok.encode(PROMPTS[0])
    gen = TextGenerator(model, tok)
    new = generate(model, [ids], 6)[0]
    with torch.no_grad():
        logits = model(torch.tensor([ids + new]))[0]
    assert logits[len(ids) - 1:-1].argmax(-1).tolist() == new
    assert gen.generate(PROMPTS[0], max_new_tokens=6) == tok.decode(new)


def test_extended_vocab_keeps_text_logits(smollm2):
    """What build_model does for configs/smollm2-135m.yaml: extend 49,152 -> 49,216 ids."""
    base, tok = smollm2
    vocab = load_config("smollm2-135m").model.vocab_size
    assert vocab % 64 == 0 and vocab >= tok.vocab_size
    model = copy.deepcopy(base)
    model.resize_vocab(vocab)
    ids = torch.tensor([tok.encode(PROMPTS[0])])
    with torch.no_grad():
        assert torch.equal(model(ids, return_hidden=True), base(ids, return_hidden=True))
        extended, original = model(ids), base(ids)
    assert extended.shape[-1] == vocab
    # Same hidden states and rows; only the wider matmul's blocking differs (observed <= 3.3e-5).
    torch.testing.assert_close(extended[..., :49152], original, atol=PARITY_ATOL, rtol=0)


def test_build_model_checks_shape():
    cfg = load_config("smollm2-135m", ["model.n_layers=12", "model.vocab_size=1000"])
    with pytest.raises(ConfigError, match=r"smollm2-135m.*model\.n_layers=12 but the file has 30.*vocab_size=1000"):
        build_model(cfg)
    cfg = load_config("smollm2-135m", ["model.init_from=/nonexistent/model.gguf"])
    with pytest.raises(FileNotFoundError, match="nonexistent"):
        build_model(cfg)


def test_random_init_ignores_files():
    cfg = load_config("smollm2-135m", ["model.init_from=", "model.n_layers=2", "model.max_seq_len=64"])
    model = build_model(cfg)
    assert model.vocab_size == 49216 and len(model.layers) == 2
    assert dataclasses.asdict(model.cfg) == dataclasses.asdict(cfg.model)
