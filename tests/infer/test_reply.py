"""omni/infer/reply.py: batched generation gives each conversation the reply it gets alone (greedy),
whether a row ends by itself, at max_new_tokens, or at the end of its context."""
import pytest
import torch

from omni.conversation import Audio, Message, Text
from omni.infer.reply import generate_replies, generate_reply
from tests import omni_fixtures as F

one_thread = pytest.fixture(autouse=True, scope="module")(F.one_thread)


def same(a, b):
    return torch.equal(a.stream.tokens, b.stream.tokens) and torch.equal(a.stream.audio, b.stream.audio) \
        and a.truncated == b.truncated


def test_batched_replies_equal_single_ones(tmp_path):
    tok, codec, v, fmt, m = F.setup(tmp_path)
    taught = [[Message("user", "Hi."), Message("assistant", "Hello there.")],
              [Message("user", "What colour is the sky on a clear day?"), Message("assistant", "Blue.")]]
    assert F.memorise(m, fmt, taught, steps=30, lr=5e-3) < 0.5
    wav = torch.randn(1, 1, 4 * codec.hop_length, generator=torch.Generator().manual_seed(0)) * 0.1
    asked = [c[:1] for c in taught] + [[Message("user", [Text("Say something long."), Audio(codec.encode(wav)[0])])]]
    for speech, cap in ((False, 12), (True, 12), (False, 2)):
        batch = generate_replies(m, fmt, asked, reply_in_speech=speech, max_new_tokens=cap)
        alone = [generate_reply(m, fmt, c, reply_in_speech=speech, max_new_tokens=cap) for c in asked]
        assert all(same(a, b) for a, b in zip(batch, alone))
        if cap == 2:
            assert all(r.truncated and len(r.stream) == 2 for r in batch)
        elif not speech:  # the taught rows end by themselves, at different steps
            assert [r.parts[0].text for r in batch[:2]] == ["Hello there.", "Blue."] and not batch[0].truncated
            assert len(batch[0].stream) != len(batch[1].stream)
    assert generate_replies(m, fmt, []) == []


def test_rows_stop_at_their_own_context(tmp_path):
    tok, codec, v, fmt, m = F.setup(tmp_path, max_seq_len=40)
    asked = [[Message("user", "Hi.")], [Message("user", "What colour is the sky on a clear day, and why is it so?")]]
    batch = generate_replies(m, fmt, asked, max_new_tokens=100)
    alone = [generate_reply(m, fmt, c, max_new_tokens=100) for c in asked]
    assert all(same(a, b) for a, b in zip(batch, alone)) and all(r.truncated for r in batch)
    assert [len(fmt.serialise(c, add_generation_prompt=True)) + len(r.stream) for c, r in zip(asked, batch)] == [40, 40]
    with pytest.raises(ValueError, match="conversation 1 takes"):
        generate_replies(m, fmt, [asked[0], [Message("user", "word " * 60)]])
