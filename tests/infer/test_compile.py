"""The fast path (omni/infer/compile.py) gives the same tokens as eager decoding, on CPU: text
generation, an omni reply (decoder + depth decoder steps) and a streaming speech session."""
import pytest
import torch

from omni.config import ServingConfig
from omni.conversation import Audio, Message
from omni.infer.reply import generate_reply
from omni.infer.session import SpeechSession
from omni.infer.text import generate
from omni.model.decoder import Decoder, ModelConfig
from omni.model.sampling import SamplingConfig
from tests import omni_fixtures as F

one_thread = pytest.fixture(autouse=True, scope="module")(F.one_thread)
# inductor writes C++ kernels and builds them with the system compiler: tens of seconds on a busy CPU
pytestmark = pytest.mark.slow


def test_compiled_text_generation_equals_eager():
    torch.manual_seed(0)
    # A large init makes the random model's greedy tokens vary, so a difference would show.
    m = Decoder(ModelConfig(vocab_size=300, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                            max_seq_len=64, init_std=0.5)).eval()
    prompts = [[1, 2, 3, 4, 5], [7, 8, 9]]
    eager = generate(m, prompts, 12)
    assert len(set(eager[0])) > 3
    assert generate(m, prompts, 12, compile=True) == eager
    other = [[4, 2], [9, 9, 9, 9]]  # other prompts and lengths: the same compiled step
    assert generate(m, other, 5, compile=True) == generate(m, other, 5)


def test_compiled_omni_reply_and_session_equal_eager(tmp_path):
    tok, codec, v, fmt, m = F.setup(tmp_path, max_seq_len=96)
    wav = torch.randn(1, 1, 4 * codec.hop_length, generator=torch.Generator().manual_seed(0)) * 0.1
    sampling = SamplingConfig(temperature=1.0)  # seeded draws: varied tokens, equal only if the logits are
    question = [Message("user", Audio(codec.encode(wav)[0]))]

    def reply(compile):
        r = generate_reply(m, fmt, question, reply_in_speech=True, max_new_tokens=6, sampling=sampling,
                           generator=torch.Generator().manual_seed(3), compile=compile)
        return r.stream

    eager, compiled = reply(False), reply(True)
    assert (eager.audio[:, 0] >= 0).sum() >= 3
    assert torch.equal(eager.tokens, compiled.tokens) and torch.equal(eager.audio, compiled.audio)

    def session(compile):
        serving = ServingConfig(max_reply_frames=4)
        with SpeechSession(m, codec, fmt, 1, sampling=sampling, generator=torch.Generator().manual_seed(5),
                           serving=serving, compile=compile) as s:  # batch 1, as the reply: the same compiled steps
            outs = list(s.feed(wav)) + list(s.feed(torch.zeros(1, 1, 0), end_turn=True)) + list(s.reply())
            return torch.stack([o.codes for o in outs]), s.logged_stream(0).tokens

    a, b = session(False), session(True)
    assert int((a[0] >= 0).sum()) > 0
    assert all(torch.equal(x, y) for x, y in zip(a, b))
