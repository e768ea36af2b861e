"""OmniModel's audio input: the frozen codec's codewords, summed per frame and projected."""
from unittest import mock

import pytest
import torch

from omni.config import ConfigError
from omni.infer.load import load_weights
from omni.model.decoder import Decoder
from omni.model.omni import OmniModel
from tests import omni_fixtures as fx


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tok = fx.text_tokenizer(tmp_path_factory.mktemp("text"))
    codec = fx.codec()
    v = fx.vocab(tok, codec)
    return codec, v, fx.model(v)


def test_audio_input_is_the_projected_codec_latent(built):
    codec, v, m = built
    torch.manual_seed(1)
    tokens = torch.randint(0, v.size, (2, 5))
    audio = torch.full((2, 5, v.audio_codebooks), -1)
    audio[0, 1:4] = torch.randint(0, v.audio_codes, (3, v.audio_codebooks))
    audio[1, 0] = torch.randint(0, v.audio_codes, (v.audio_codebooks,))
    frames = audio[..., 0] >= 0
    # What the codec's own decoder starts from: the sum of the frame's codewords [B, dim, T].
    latent = codec.quantizer.decode(audio.clamp(min=0).transpose(1, 2)).transpose(1, 2)
    want = m.decoder.embed(tokens) + m.audio_in(latent) * frames[..., None]
    with torch.no_grad():
        torch.testing.assert_close(m.embed(tokens, audio), want)
        with mock.patch.object(torch.compiler, "is_compiling", return_value=True):  # the static-shape path
            torch.testing.assert_close(m.embed(tokens, audio), want)


def test_codewords_must_fit_the_vocabulary(built):
    codec, v, m = built
    with pytest.raises(ValueError, match="quantizer.codebooks of the codec"):
        OmniModel(Decoder(m.decoder.cfg), fx.omni_config(), v, codec.quantizer.codebooks[:, :10])


def test_a_checkpoint_with_code_embeddings_names_the_fix(built, tmp_path):
    codec, v, m = built
    state = dict(m.state_dict())
    state["audio_embeddings.weight"] = torch.zeros(v.audio_codebooks * v.audio_codes, m.decoder.cfg.dim)
    del state["audio_in.weight"]
    with pytest.raises(ConfigError, match="predates the codec-codeword audio input"):
        load_weights(m, state, tmp_path)
