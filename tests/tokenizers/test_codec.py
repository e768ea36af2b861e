"""Speech codec over HiFi-GAN mels: fitting, streaming encode gives the offline codes, streaming mel
decode and the streamed waveform equal offline within float rounding; shapes, save/load, old
checkpoints."""
import argparse
import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

import omni.tokenizers.codec as codec_module
import omni.train.tasks.vocoder as vocoder_task
from omni.data.voices import espeak_voices, synth_at
from omni.nn.hifigan import load_hifigan
from omni.tokenizers import load_tokenizer
from omni.tokenizers.codec import CodecConfig, SpeechCodec, shipped_codec
from omni.config import load_config
from omni.data.build_speech import build_speech_corpus
from omni.train.task import get_task
from omni.train.tasks.codec import CodecTask
from omni.train.trainer import Trainer, read_metrics
from tests import omni_fixtures as F

# Streamed mel decode vs offline: the same convolutions over shorter inputs, which oneDNN may run
# with another kernel (another summation order) for some widths: float rounding only.
STREAM_MEL_ATOL = 1e-5
# Streamed waveform vs offline, relative to the offline peak: every vocoder layer is cached and each
# sample computed once from the same inputs, so float rounding only, the streamed mels' included
# (measured 1.3e-7 on real speech's exact mels, 1.1e-5 on streamed decoder mels).
STREAM_WAVE_RTOL = 1e-4


def tiny_codec(**kw) -> SpeechCodec:
    """A small codec fitted to noise with a spectral tilt (so its codes vary), decoder untrained."""
    torch.manual_seed(0)
    base = dict(channels=16, dim=16, num_codebooks=3, codebook_size=64)
    base.update(kw)
    codec = SpeechCodec(CodecConfig(**base)).eval()
    wav = torch.randn(4, 1, codec.hop_length * 8).cumsum(-1) * 0.01
    codec.fit(wav - wav.mean(-1, keepdim=True), progress=False)
    return codec


def test_fit_sets_statistics_projection_and_codebooks():
    torch.manual_seed(0)
    codec = SpeechCodec(CodecConfig(dim=12, channels=16, num_codebooks=3, codebook_size=32)).eval()
    wav = torch.randn(6, 1, codec.hop_length * 8) * torch.linspace(0.01, 0.3, 6)[:, None, None]
    stats = codec.fit(wav, progress=False)
    mel = codec.mel(wav)
    torch.testing.assert_close(codec.encoder.mel_mean, mel.mean((0, 2)), atol=1e-4, rtol=0)
    p = codec.encoder.components
    torch.testing.assert_close(p @ p.T, torch.eye(12), atol=1e-5, rtol=0)  # orthonormal rows
    assert 0 < stats["variance_kept"] < 1 and stats["vectors"] == 6 * 7 * 7  # 7 whole frames at each of 7 offsets
    assert all(a > b for a, b in zip(stats["kmeans_mse"], stats["kmeans_mse"][1:]))
    # Before the decoder trains it returns the projected k-means reconstruction: more levels, closer mels.
    codes = codec.encode(wav)
    errors = [(codec.decode_mel(codes[:, :k]) - mel).abs().mean().item() for k in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2], errors


def test_fit_needs_enough_vectors():
    codec = SpeechCodec(CodecConfig(dim=8, channels=16, num_codebooks=1, codebook_size=64))
    with pytest.raises(ValueError, match="more training audio"):
        codec.fit(torch.randn(1, 1, codec.hop_length * 2) * 0.1, progress=False)


def test_round_trip_shapes_and_metadata():
    codec = tiny_codec()
    hop, k = codec.hop_length, codec.cfg.num_codebooks
    assert hop == 1792 and codec.sample_rate == 22050
    wav = torch.randn(2, 1, hop * 3) * 0.1
    codes = codec.encode(wav)
    assert codes.shape == (2, k, 3) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < codec.cfg.codebook_size
    assert codec.decode_mel(codes).shape == (2, 80, 3 * 7)
    out = codec.decode(codes[:, :1])  # fewer codebooks decode too (quantiser dropout trains this)
    assert out.shape == wav.shape and out.dtype == torch.float32
    m = codec.metadata
    assert m["hop_length"] == hop and m["sample_rate"] == 22050 and m["frame_rate"] == pytest.approx(22050 / 1792)
    assert m["bitrate"] == pytest.approx(22050 / 1792 * 3 * 6)
    assert "vocoder." not in " ".join(codec.state_dict())  # the vocoder is not the tokenizer's weights


@pytest.mark.parametrize("frames_per_chunk", [1, 3])
def test_streaming_encode_and_mel_decode_equal_offline(frames_per_chunk):
    codec = tiny_codec()
    hop = codec.hop_length
    wav = torch.randn(2, 1, hop * 6) * 0.1
    codes = codec.encode(wav)
    mel = codec.decode_mel(codes)
    step = hop * frames_per_chunk
    with codec.streaming(2):
        s_codes = torch.cat([codec.encode(wav[..., i : i + step]) for i in range(0, wav.shape[-1], step)], -1)
    with codec.streaming(2):
        s_mel = torch.cat([codec.decode_mel(codes[..., i : i + frames_per_chunk]) for i in range(0, 6, frames_per_chunk)], -1)
    assert torch.equal(s_codes, codes)
    torch.testing.assert_close(s_mel, mel, atol=STREAM_MEL_ATOL, rtol=0)


def test_streamed_waveform_is_offline_delayed_by_the_lookahead():
    codec = tiny_codec()
    wav = torch.randn(2, 1, codec.hop_length * 5).cumsum(-1) * 0.01  # like the signal it was fitted on
    codes = codec.encode(wav - wav.mean(-1, keepdim=True))
    offline = codec.decode(codes)
    delay = codec.cfg.vocoder_lookahead * 256
    with codec.streaming(2):
        chunks = [codec.decode(codes[..., i : i + 1]) for i in range(5)]
        tail = codec.flush()
    assert all(c.shape == (2, 1, codec.hop_length) for c in chunks)  # one frame in, one frame of samples out
    streamed = torch.cat(chunks + [tail], -1)
    assert streamed.shape[-1] == offline.shape[-1] + delay
    assert torch.equal(streamed[..., :delay], torch.zeros(2, 1, delay))
    err = (streamed[..., delay:] - offline).abs().max() / offline.abs().max()
    assert err < STREAM_WAVE_RTOL, err


def test_flush_ends_one_row_and_leaves_the_others_streaming():
    """A batch of replies ends row by row: flushing row 0 gives its held-back end (equal to offline)
    and zeros for row 1, whose stream goes on as if nothing happened; row 0 then voices its next
    frames as offline vocoding does after as many frames of silence."""
    codec = tiny_codec()
    wav = torch.randn(2, 1, codec.hop_length * 5).cumsum(-1) * 0.01  # like the signal it was fitted on
    codes = codec.encode(wav - wav.mean(-1, keepdim=True))  # speech-like mels, not random codes
    delay = codec.cfg.vocoder_lookahead * 256
    short, long = codec.decode(codes[:1, :, :3]), codec.decode(codes[1:])
    with codec.streaming(2):
        first = [codec.decode(codes[..., i : i + 1]) for i in range(3)]
        tail0 = codec.flush(torch.tensor([True, False]))
        rest = [codec.decode(codes[..., i : i + 1]) for i in range(3, 5)]
        tail1 = codec.flush(torch.tensor([False, True]))
        tail0_next = codec.flush(torch.tensor([True, False]))
    assert tail0.shape == tail1.shape == (2, 1, delay)
    assert not tail0[1].any() and not tail1[0].any()
    row0 = torch.cat([c[0] for c in first] + [tail0[0]], -1)[..., delay:]
    row1 = torch.cat([c[1] for c in first + rest] + [tail1[1]], -1)[..., delay:]
    mel = codec.decode_mel(codes[:1])[..., 3 * 7 :]
    after_silence = codec.vocoder.generator(torch.cat([torch.full((1, 80, 3 * 7), codec.cfg.mel_floor), mel], -1))
    row0_next = torch.cat([c[0] for c in rest] + [tail0_next[0]], -1)
    for streamed, offline in ((row0, short[0]), (row1, long[0]), (row0_next[..., delay:], after_silence[0, :, 3 * 7 * 256 :])):
        assert streamed.shape == offline.shape
        assert (streamed - offline).abs().max() / offline.abs().max() < STREAM_WAVE_RTOL
    assert not row0_next[..., : delay - codec.vocoder.lag].any()  # its held-back samples were dropped


def test_vocoder_lookahead_must_cover_the_generators_right_context():
    codec = tiny_codec(vocoder_lookahead=12)
    with pytest.raises(ValueError, match="vocoder_lookahead >= 13"):
        codec.vocoder


def test_streaming_reset_one_stream():
    codec = tiny_codec()
    hop = codec.hop_length
    first, second = torch.randn(2, 1, hop * 3) * 0.1, torch.randn(2, 1, hop * 3) * 0.1
    with codec.streaming(2):
        codec.encode(first)
        codec.reset_streaming(torch.tensor([False, True]))
        got = codec.encode(second)
    # stream 0 continued, stream 1 started afresh on its second chunk
    assert torch.equal(got[:1], codec.encode(torch.cat([first[:1], second[:1]], -1))[..., 3:])
    assert torch.equal(got[1:], codec.encode(second[1:]))
    codes = codec.encode(torch.cat([first, second], -1))
    with codec.streaming(2):
        codec.decode_mel(codes[..., :3])
        codec.reset_streaming(torch.tensor([False, True]))
        out = codec.decode_mel(codes[..., 3:])
    torch.testing.assert_close(out[:1], codec.decode_mel(codes)[:1, :, 3 * 7 :], atol=STREAM_MEL_ATOL, rtol=0)
    torch.testing.assert_close(out[1:], codec.decode_mel(codes[..., 3:])[1:], atol=STREAM_MEL_ATOL, rtol=0)


def test_save_load_round_trip(tmp_path):
    codec = tiny_codec()
    codec.save(tmp_path / "codec")
    again = load_tokenizer(tmp_path / "codec")
    assert isinstance(again, SpeechCodec)
    wav = torch.randn(1, 1, codec.hop_length * 2) * 0.1
    assert torch.equal(again.encode(wav), codec.encode(wav))
    assert again.metadata == codec.metadata
    assert torch.equal(again.decode_mel(again.encode(wav)), codec.decode_mel(codec.encode(wav)))


def test_codec_saved_for_the_re_reading_vocoder_loads(tmp_path):
    """A folder saved when the vocoder re-read past frames (``vocoder_context``, lookahead 12) loads
    with the cached vocoder's lookahead; the weights are the same."""
    codec = tiny_codec()
    codec.save(tmp_path / "codec")
    meta = json.loads((tmp_path / "codec" / "tokenizer.json").read_text())
    meta["state"]["config"] |= {"vocoder_context": 13, "vocoder_lookahead": 12}
    (tmp_path / "codec" / "tokenizer.json").write_text(json.dumps(meta))
    again = load_tokenizer(tmp_path / "codec")
    assert again.cfg.vocoder_lookahead == CodecConfig.vocoder_lookahead and again.vocoder.lookahead == 13


@pytest.mark.parametrize("config,removed", [
    ({"sample_rate": 16000, "stft_hop": 160, "strides": [2, 2, 2], "num_codebooks": 8}, "spectral codec"),
    ({"sample_rate": 22050, "channels": 64, "frame_channels": 384, "dim": 64, "num_codebooks": 16}, "residual-FSQ"),
])
def test_removed_codec_checkpoints_fail_clearly(tmp_path, config, removed):
    codec = tiny_codec()
    codec.save(tmp_path / "codec")
    meta = json.loads((tmp_path / "codec" / "tokenizer.json").read_text())
    meta["state"]["config"] = config
    (tmp_path / "codec" / "tokenizer.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"{removed}.*train.py --config configs/codec-tiny.yaml"):
        load_tokenizer(tmp_path / "codec")


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
    with pytest.raises(Exception, match="22050"):
        CodecConfig(sample_rate=16000).validate()


@pytest.mark.slow
def test_tiny_codec_fit_and_training_lower_mel_error(tmp_path):
    """~1.5 min of synthetic espeak speech: fitting (PCA + residual k-means, CodecTask.fit_to_data)
    takes the mel L1 on unseen voices far below the unfitted codec's (measured 5.25 -> 0.68), and 60
    Trainer steps of the decoder lower it on training crops (0.66 -> 0.60). On the unseen Kokoro
    voices the espeak-trained decoder does not help (0.67 -> 0.69): docs/benchmarks.md measures the
    decoder's gain on the real corpus (1-2 %)."""
    import argparse

    data = tmp_path / "speech"
    build_speech_corpus(data, sample_rate=22050, minutes=1.5, speakers=12, source="generated", real=False, kokoro_share=0.0)
    overrides = [
        f"codec.data_path={data}", "codec.channels=64", "codec.dim=32", "codec.num_codebooks=4",
        "codec.codebook_size=64", "codec.fit_vectors=5000", "codec.segment_seconds=0.8",
        "train.batch_size=4", "train.warmup_steps=5", "train.log_every=20", "train.tensorboard=false",
    ]
    cfg = load_config("codec-tiny", overrides + [f"train.out_dir={tmp_path / 'run'}", "train.steps=60", "train.ckpt_every=60"])
    task = CodecTask()
    val, train = task.build_dataset(cfg, "val"), task.build_dataset(cfg, "train")
    unseen = torch.stack([val[i] for i in range(len(val))])
    seen = torch.stack([train[i] for i in range(0, len(train), max(1, len(train) // 16))])

    def mel_error(codec, wav):
        with torch.no_grad():
            codec.eval()
            return (codec.decode_mel(codec.encode(wav)) - codec.mel(wav)).abs().mean().item()

    unfitted = mel_error(SpeechCodec(cfg.section("codec")), unseen)
    trainer = Trainer(cfg, task, argparse.Namespace(overwrite=True))
    fitted, fitted_seen = mel_error(trainer.module, unseen), mel_error(trainer.module, seen)
    last = trainer.fit()
    trained = load_tokenizer(last / "tokenizer")  # written by CodecTask.on_save
    trained_seen = mel_error(trained, seen)
    print(f"mel L1 on unseen voices: unfitted {unfitted:.3f} -> fitted {fitted:.3f} -> trained {mel_error(trained, unseen):.3f}; "
          f"on training crops: fitted {fitted_seen:.3f} -> trained {trained_seen:.3f}")
    assert unfitted / fitted >= 2 and trained_seen < fitted_seen

    # The decoder trains on from the saved codec folder (weights and tokenizer.json, as omni/assets
    # ships it): nothing is refitted, so every code stays the same.
    tuned_cfg = load_config("codec-tiny", overrides + [f"train.out_dir={tmp_path / 'tuned'}", "train.steps=10",
                                                       "train.ckpt_every=10", f"train.finetune_from={last / 'tokenizer'}"])
    tuned = load_tokenizer(Trainer(tuned_cfg, task, argparse.Namespace()).fit() / "tokenizer")
    with torch.no_grad():
        assert torch.equal(tuned.encode(unseen), trained.encode(unseen))
    before, after = trained.state_dict(), tuned.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("decoder.") for name in changed), changed


@pytest.mark.slow
def test_vocoder_gan_task_runs_both_optimisers(tmp_path):
    """The vocoder task (HiFi-GAN fine-tuning on the codec's mels) on the multi-optimiser Trainer:
    both phases step, the frozen codec does not move, the generator is written beside the checkpoint
    and a codec that names it (``codec.vocoder``) voices its mels with it."""
    data = tmp_path / "speech"
    build_speech_corpus(data, sample_rate=22050, minutes=0.3, speakers=4, source="generated", real=False)
    codec = tiny_codec()
    codec.save(tmp_path / "codec")
    cfg = load_config("vocoder-tiny", [
        f"vocoder.codec={tmp_path / 'codec'}", "vocoder.init=random", "vocoder.channels=16", "vocoder.disc_width=2",
        f"codec.data_path={data}", "codec.segment_seconds=0.16", f"train.out_dir={tmp_path / 'run'}",
        "train.steps=2", "train.batch_size=2", "train.warmup_steps=1", "train.ckpt_every=2", "train.log_every=1",
        "train.tensorboard=false",
    ])
    task = get_task("vocoder")
    trainer = Trainer(cfg, task, argparse.Namespace())
    generator_before = {k: v.clone() for k, v in trainer.module.generator.state_dict().items()}
    last = trainer.fit()
    record = read_metrics(tmp_path / "run")[-1]
    assert {"loss_discriminator", "loss_generator", "d_loss", "g_mel_l1"} <= set(record)
    for k, v in codec.state_dict().items():
        assert torch.equal(trainer.module.codec.state_dict()[k], v)
    saved = load_file(str(last / "vocoder.safetensors"))
    assert any(not torch.equal(saved[k], v) for k, v in generator_before.items())
    voiced = SpeechCodec(replace(codec.cfg, vocoder=str(last / "vocoder.safetensors")))
    assert voiced.vocoder.generator.cfg.channels == 16


@pytest.mark.slow
def test_vocoder_distillation_prunes_v1_and_learns_its_waveform(tmp_path, monkeypatch):
    """``configs/vocoder-small.yaml`` at test size: V1 pruned to 32 channels on the codec's mels,
    then trained with one optimiser to regress V1's waveform for the same mels; the loss falls and
    the written generator is the narrow one. A resumed run loads its generator and prunes nothing."""
    data = tmp_path / "speech"
    build_speech_corpus(data, sample_rate=22050, minutes=0.2, speakers=3, source="generated", real=False)
    codec = tiny_codec()
    codec.save(tmp_path / "codec")
    cfg = load_config("vocoder-small", [
        f"vocoder.codec={tmp_path / 'codec'}", "vocoder.channels=32", "vocoder.prune_batches=2",
        f"codec.data_path={data}", "codec.segment_seconds=0.16", f"train.out_dir={tmp_path / 'run'}",
        "train.steps=12", "train.batch_size=2", "train.lr=1e-3", "train.warmup_steps=1", "train.ckpt_every=12",
        "train.log_every=1", "train.tensorboard=false",
    ])
    trainer = Trainer(cfg, get_task("vocoder"), argparse.Namespace())
    assert set(trainer.phases) == {"generator"} and not hasattr(trainer.module, "discriminator")
    last = trainer.fit()
    records = [r for r in read_metrics(tmp_path / "run") if "mel_l1" in r]
    assert len(records) == 12 and {"loss_generator", "wave_l1"} <= set(records[-1])
    first, final = (sum(r["mel_l1"] for r in rs) / 3 for rs in (records[:3], records[-3:]))
    assert final < first, (first, final)
    assert load_hifigan(last / "vocoder.safetensors").cfg.channels == 32

    def no_pruning(*args):
        raise AssertionError("a resumed run pruned V1 again")
    monkeypatch.setattr(vocoder_task, "prune_hifigan", no_pruning)
    resumed = Trainer(cfg, get_task("vocoder"), argparse.Namespace(resume=str(last)))
    for k, v in load_file(str(last / "vocoder.safetensors")).items():
        assert torch.equal(resumed.module.generator.state_dict()[k], v)


def test_shipped_codec_checks_its_sha256_and_reconstructs_speech(tmp_path, monkeypatch):
    """The weights in omni/assets/codec-tiny load after the sha256 check and reconstruct an espeak-ng
    sentence's log-mels (an unseen voice and text) within L1 0.6 (measured 0.36 on the unseen Kokoro
    voices of its val set; an unfitted codec: ~5); a damaged copy is refused."""
    codec = shipped_codec()
    assert codec.cfg.num_codebooks == 16 and codec.metadata["bitrate"] == pytest.approx(1968.75)
    wav = codec.pad_to_hop(synth_at(espeak_voices(3, seed=7)[2], "Please open the kitchen window before dinner.", 22050))
    wav = wav[None, None] * 0.8
    error = (codec.decode_mel(codec.encode(wav)) - codec.mel(wav)).abs().mean().item()
    assert error < 0.6, error
    damaged = F.damaged_copy(codec_module.SHIPPED_CODEC, tmp_path / "codec-tiny", "model.safetensors")
    monkeypatch.setattr(codec_module, "SHIPPED_CODEC", damaged)
    with pytest.raises(ValueError, match="sha256"):
        shipped_codec()
