"""Speech codec: streaming equals offline bit for bit, shapes/dtypes, quantiser dropout, save/load."""
import pytest
import torch

from omni.tokenizers import load_tokenizer
from omni.tokenizers.codec import CodecConfig, SpeechCodec


def tiny_codec(**kw) -> SpeechCodec:
    torch.manual_seed(0)
    base = dict(sample_rate=3200, strides=[4, 4, 8], channels=8, dim=32, num_codebooks=3, codebook_size=32, codebook_dim=8)
    base.update(kw)
    codec = SpeechCodec(CodecConfig(**base))
    codec.train()
    codec(torch.randn(2, 1, codec.hop_length * 8) * 0.1)  # one training pass seeds the codebooks
    return codec.eval()


def test_round_trip_shapes_and_dtypes():
    codec = tiny_codec()
    hop, k = codec.hop_length, codec.cfg.num_codebooks
    wav = torch.randn(3, 1, hop * 7) * 0.1
    codes = codec.encode(wav)
    assert codes.shape == (3, k, 7) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < codec.cfg.codebook_size
    out = codec.decode(codes)
    assert out.shape == wav.shape and out.dtype == torch.float32
    # fewer codebooks still decode (quantiser dropout trains this case)
    assert codec.decode(codes[:, :1]).shape == wav.shape
    m = codec.metadata
    assert m["hop_length"] == hop and m["num_codebooks"] == k and m["frame_rate"] == codec.sample_rate / hop


@pytest.mark.parametrize("frames_per_chunk", [1, 3])
def test_streaming_equals_offline_bit_for_bit(frames_per_chunk):
    codec = tiny_codec()
    hop = codec.hop_length
    wav = torch.randn(2, 1, hop * 9) * 0.1
    codes = codec.encode(wav)
    out = codec.decode(codes)
    step = hop * frames_per_chunk
    with codec.streaming(2):
        s_codes = torch.cat([codec.encode(wav[..., i : i + step]) for i in range(0, wav.shape[-1], step)], -1)
    with codec.streaming(2):
        s_out = torch.cat([codec.decode(codes[..., i : i + frames_per_chunk]) for i in range(0, 9, frames_per_chunk)], -1)
    assert torch.equal(s_codes, codes)
    assert torch.equal(s_out, out)


def test_streaming_reset_one_stream():
    codec = tiny_codec()
    hop = codec.hop_length
    first, second = torch.randn(2, 1, hop * 4) * 0.1, torch.randn(2, 1, hop * 4) * 0.1
    with codec.streaming(2):
        codec.encode(first)
        codec.reset_streaming(torch.tensor([False, True]))
        got = codec.encode(second)
    # stream 0 continued, stream 1 started afresh on its second chunk
    assert torch.equal(got[:1], codec.encode(torch.cat([first[:1], second[:1]], -1))[..., 4:])
    assert torch.equal(got[1:], codec.encode(second[1:]))


def test_save_load_round_trip(tmp_path):
    codec = tiny_codec()
    codec.save(tmp_path / "codec")
    again = load_tokenizer(tmp_path / "codec")
    assert isinstance(again, SpeechCodec)
    wav = torch.randn(1, 1, codec.hop_length * 5) * 0.1
    assert torch.equal(again.encode(wav), codec.encode(wav))
    assert again.metadata == codec.metadata


def test_bad_inputs():
    codec = tiny_codec()
    with pytest.raises(ValueError, match="mono"):
        codec.encode(torch.zeros(1, 2, codec.hop_length))
    with pytest.raises(ValueError, match="multiple of hop_length"):
        codec.encode(torch.zeros(1, 1, codec.hop_length + 1))
    with pytest.raises(ValueError, match="code ids"):
        codec.decode(torch.full((1, 3, 2), codec.cfg.codebook_size))
    with pytest.raises(ValueError, match="codes"):
        codec.decode(torch.zeros(1, 4, 2, dtype=torch.long))
