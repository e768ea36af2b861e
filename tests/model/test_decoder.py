"""Decoder math against a plain reference, the mask rule, the KV cache, generation."""
import math

import pytest
import torch
import torch.nn.functional as F

from omni.model.attention import AttentionMask, attention
from omni.model.decoder import Decoder, ModelConfig
from omni.infer.text import generate
from omni.model.sampling import SamplingConfig, sample


def tiny_cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=97, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=64)
    base.update(kw)
    return ModelConfig(**base)


def naive_decoder(model: Decoder, tokens: torch.Tensor) -> torch.Tensor:
    """The same Llama maths written out longhand: loops over heads, explicit causal softmax."""
    cfg = model.cfg
    x = model.tok_embeddings.weight[tokens]
    s = tokens.shape[1]
    hd = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2).double() / hd))
    ang = torch.outer(torch.arange(s).double(), inv).float()

    def rms(v, w):
        return v / torch.sqrt((v * v).mean(-1, keepdim=True) + cfg.norm_eps) * w

    def rope(v):  # v [S, hd]
        a, b = v[:, : hd // 2], v[:, hd // 2 :]
        return torch.cat([a * ang.cos() - b * ang.sin(), b * ang.cos() + a * ang.sin()], -1)

    for layer in model.layers:
        att = layer.attention
        h = rms(x, layer.attention_norm.weight)
        outs = []
        for bi in range(tokens.shape[0]):
            heads = []
            for hi in range(cfg.n_heads):
                kv = hi // (cfg.n_heads // cfg.n_kv_heads)
                q = h[bi] @ att.wq.weight[hi * hd : (hi + 1) * hd].T
                k = h[bi] @ att.wk.weight[kv * hd : (kv + 1) * hd].T
                v = h[bi] @ att.wv.weight[kv * hd : (kv + 1) * hd].T
                if att.q_norm is not None:
                    q, k = rms(q, att.q_norm.weight), rms(k, att.k_norm.weight)
                q, k = rope(q), rope(k)
                sc = q @ k.T / math.sqrt(hd)
                sc = sc.masked_fill(torch.triu(torch.ones(s, s, dtype=torch.bool), 1), float("-inf"))
                heads.append(sc.softmax(-1) @ v)
            outs.append(torch.cat(heads, -1))
        x = x + torch.stack(outs) @ att.wo.weight.T
        h = rms(x, layer.ffn_norm.weight)
        ff = layer.feed_forward
        x = x + (F.silu(h @ ff.w1.weight.T) * (h @ ff.w3.weight.T)) @ ff.w2.weight.T
    x = rms(x, model.norm.weight)
    w = model.tok_embeddings.weight if model.output is None else model.output.weight
    return x @ w.T


@pytest.mark.parametrize("qk_norm,tie", [(False, True), (True, False)])
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_decoder_matches_longhand_reference(qk_norm, tie, backend):
    torch.manual_seed(0)
    model = Decoder(tiny_cfg(qk_norm=qk_norm, tie_embeddings=tie, attention=backend))
    tokens = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        ours = model(tokens)
        ref = naive_decoder(model, tokens)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def brute_visible(i, j, doc, span, causal, window):
    vis = (j <= i) if causal else True
    same_span = span is not None and span[i] == span[j] and span[i] > 0
    vis = vis or same_span
    if window is not None:
        vis = vis and (i - j < window or same_span)
    if doc is not None:
        vis = vis and doc[i] == doc[j]
    return vis


@pytest.mark.parametrize("causal,window", [(True, None), (True, 3), (False, None)])
def test_mask_rule_matches_brute_force(causal, window):
    doc = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2]])
    span = torch.tensor([[0, 1, 1, 0, 2, 2, 2, 0, 0]])
    m = AttentionMask(causal=causal, document_ids=doc, span_ids=span, sliding_window=window)
    dense = m.dense(1, 9, 9, torch.device("cpu"))[0, 0]
    for i in range(9):
        for j in range(9):
            assert bool(dense[i, j]) == brute_visible(i, j, doc[0], span[0], causal, window), (i, j)


def test_sdpa_equals_reference_on_packed_multimodal_mask():
    torch.manual_seed(0)
    q = torch.randn(2, 4, 10, 16)
    k, v = torch.randn(2, 2, 10, 16), torch.randn(2, 2, 10, 16)
    doc = torch.tensor([[0] * 5 + [1] * 5, [0] * 10])
    span = torch.tensor([[0, 1, 1, 1, 0, 0, 2, 2, 0, 0], [0] * 10])
    m = AttentionMask(document_ids=doc, span_ids=span)
    torch.testing.assert_close(attention(q, k, v, m, "sdpa"), attention(q, k, v, m, "reference"), atol=1e-5, rtol=1e-5)


def test_streaming_cache_equals_full_forward():
    torch.manual_seed(0)
    model = Decoder(tiny_cfg()).eval()
    tokens = torch.randint(0, 97, (3, 20))
    with torch.no_grad():
        full = model(tokens)
        with model.streaming(3, max_len=32):
            parts = [model(tokens[:, :7]), model(tokens[:, 7:8]), model(tokens[:, 8:20])]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_streaming_reset_one_row():
    torch.manual_seed(0)
    model = Decoder(tiny_cfg()).eval()
    a, b = torch.randint(0, 97, (2, 6)), torch.randint(0, 97, (2, 6))
    with torch.no_grad(), model.streaming(2, max_len=32):
        model(a)
        model.reset_streaming(torch.tensor([True, False]))
        out = model(b)
    with torch.no_grad():
        fresh = model(b[:1])
        cont = model(torch.cat([a[1:], b[1:]], 1))[:, 6:]
    torch.testing.assert_close(out[:1], fresh, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1:], cont, atol=1e-5, rtol=1e-5)


def test_generate_greedy_matches_argmax_loop_and_ragged_prompts():
    torch.manual_seed(0)
    model = Decoder(tiny_cfg()).eval()
    prompts = [[1, 2, 3, 4, 5], [7, 8]]
    out = generate(model, prompts, max_new_tokens=6)
    for p, o in zip(prompts, out):
        seq = list(p)
        for _ in range(6):
            with torch.no_grad():
                seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
        assert o == seq[len(p):]


def test_generate_errors():
    model = Decoder(tiny_cfg())
    with pytest.raises(ValueError, match="exceeds the model context"):
        generate(model, [[1] * 60], max_new_tokens=10)
    with pytest.raises(ValueError, match="token ids must lie"):
        generate(model, [[1, 500]], max_new_tokens=2)


def test_sampling_top_k_top_p():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).repeat(200, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample(logits, SamplingConfig(temperature=1.0, top_k=2), g).tolist()) <= {2, 3}
    # top_p=0.5: token 3 alone holds 64% of the mass
    assert set(sample(logits, SamplingConfig(temperature=1.0, top_p=0.5), g).tolist()) == {3}


def test_resize_vocab_keeps_text_logits():
    torch.manual_seed(0)
    for tie in (True, False):
        model = Decoder(tiny_cfg(tie_embeddings=tie)).eval()
        tokens = torch.randint(0, 97, (2, 9))
        with torch.no_grad():
            before = model(tokens)
            model.resize_vocab(120)
            after = model(tokens)
        assert after.shape[-1] == 120
        torch.testing.assert_close(after[..., :97], before, atol=0, rtol=0)


def test_rewind_forgets_stale_spans():
    """After set_streaming_offset, a new span must not see keys of an old span at later positions."""
    torch.manual_seed(0)
    model = Decoder(tiny_cfg()).eval()
    a, b = torch.randint(0, 97, (1, 8)), torch.randint(0, 97, (1, 3))
    span = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    with torch.no_grad(), model.streaming(1, max_len=16):
        model(a, mask=AttentionMask(span_ids=span))
        model.set_streaming_offset(torch.tensor([3]))
        # CUDA reads the whole static cache, so stale span ids past the offset must be gone.
        for layer in model.layers:
            assert int(layer.attention._streaming_state.span_ids[0, 3:].abs().sum()) == 0
        out = model(b, mask=AttentionMask(span_ids=torch.ones(1, 3, dtype=torch.long)))
    with torch.no_grad():
        ref = model(torch.cat([a[:, :3], b], 1), mask=AttentionMask(span_ids=torch.tensor([[0, 0, 0, 1, 1, 1]])))[:, 3:]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_empty_batch_runs_forward_and_backward():
    """A batch with no rows (e.g. no audio frames for the depth decoder) still flows, so every rank
    under FSDP/ZeRO runs the same graph."""
    model = Decoder(tiny_cfg())
    out = model(embeds=torch.zeros(0, 5, 64, requires_grad=True))
    assert out.shape == (0, 5, 97)
    out.sum().backward()


@pytest.mark.parametrize("sampling", [SamplingConfig(), SamplingConfig(temperature=1.0), SamplingConfig(temperature=1e-30),
                                      SamplingConfig(temperature=5.0, top_k=1000), SamplingConfig(temperature=0.7, top_p=0.01),
                                      SamplingConfig(temperature=2.0, top_k=3, top_p=0.5)])
def test_generate_never_emits_padding_ids(sampling):
    """Issue 19 (decoding): the model's vocabulary is padded past the tokenizer's; those ids must
    never come out, whatever the sampling, even when the model favours them."""
    torch.manual_seed(0)
    model = Decoder(tiny_cfg(vocab_size=320, tie_embeddings=False)).eval()
    with torch.no_grad():
        model.output.weight[300:] = model.output.weight[:20] * 50  # padding rows dominate the logits
    assert int(model(torch.tensor([[1, 2]]))[0, -1].argmax()) >= 300
    out = generate(model, [[1, 2, 3], [4]], 20, sampling, generator=torch.Generator().manual_seed(0), vocab_size=300)
    assert all(0 <= t < 300 for row in out for t in row) and all(len(row) == 20 for row in out)
    with pytest.raises(ValueError, match="vocab_size"):
        generate(model, [[1]], 2, vocab_size=0)
    assert generate(model, [[1]], 2, vocab_size=10_000)[0][0] >= 300  # a larger tokenizer: the model's ids
