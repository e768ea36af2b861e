"""Small shared builders for the omni tests: a text tokenizer trained in a second, random (untrained)
codec / image / video tokenizers of tiny shapes (the codec voiced by a random 32-channel HiFi-GAN:
its mels are noise, so the pretrained V1's 512 channels would only cost time), a tiny OmniModel, and
a quick trainer that makes it memorise a handful of conversations."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file

from omni.config import Config, save_config
from omni.conversation import ConversationFormat, OmniVocab
from omni.model.decoder import Decoder, ModelConfig
from omni.model.omni import OmniConfig, OmniModel
from omni.nn.hifigan import HiFiGAN, HiFiGANConfig
from omni.tokenizers.codec import CodecConfig, SpeechCodec
from omni.tokenizers.image import ImageTokConfig, ImageTokenizer
from omni.tokenizers.text import SentencePieceTokenizer
from omni.tokenizers.video import VideoTokConfig, VideoTokenizer
from omni.train.tasks.omni import batch_from_streams, omni_loss

SENTENCES = [
    "hello there, how are you today?", "the cat sat on the mat.", "what is the capital of france?",
    "paris is the capital of france.", "a photo of a cat.", "describe the video please.",
    "one two three four five six seven eight nine ten.", "the quick brown fox jumps over the lazy dog.",
] * 20


def text_tokenizer(folder: Path) -> SentencePieceTokenizer:
    return SentencePieceTokenizer.train(SENTENCES, 400, folder)


@functools.cache
def small_vocoder() -> Path:
    """A random HiFi-GAN of 32 channels as a generator file, named by its weights' digest (so a file
    left by another version of the generator is never read) and written atomically: the seeded weights
    are the same in every process."""
    torch.manual_seed(0)
    state = HiFiGAN(HiFiGANConfig(channels=32)).state_dict()
    digest = hashlib.sha256(b"".join(t.numpy().tobytes() for t in state.values())).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / "omni-tests" / f"hifigan-32-{digest}.safetensors"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file(state, str(tmp))
        tmp.rename(path)
    return path


def codec(num_codebooks: int = 4, codebook_size: int = 64, vocoder: Optional[str] = None) -> SpeechCodec:
    """``vocoder``: None for :func:`small_vocoder`; "universal" where a test needs the pretrained V1's
    behaviour (silent mels play silence; speech the speaker encoder can embed). The codec's own
    weights do not depend on it."""
    vocoder = vocoder or str(small_vocoder())
    torch.manual_seed(0)
    cfg = CodecConfig(channels=8, dim=32, num_codebooks=num_codebooks, codebook_size=codebook_size, vocoder=vocoder)
    return SpeechCodec(cfg).eval()


def image_tokenizer() -> ImageTokenizer:
    torch.manual_seed(0)
    return ImageTokenizer(ImageTokConfig(image_size=16, channels=8, channel_mult=[1, 2, 2, 2], blocks=1, levels=[4, 4])).eval()


def video_tokenizer() -> VideoTokenizer:
    torch.manual_seed(0)
    return VideoTokenizer(VideoTokConfig(image_size=16, channels=8, channel_mult=[1, 2, 2, 2], latent_channels=8,
                                         levels=[3, 3], temporal_stride=2)).eval()


def vocab(text, codec_: SpeechCodec) -> OmniVocab:
    return OmniVocab.build(text, codec_.metadata, image_tokenizer().metadata, video_tokenizer().metadata)


def omni_config(**kw) -> OmniConfig:
    return OmniConfig(depth_dim=32, depth_layers=1, depth_heads=2, depth_ffn_dim=64, **kw)


def model(v: OmniVocab, max_seq_len: int = 256, seed: int = 0) -> OmniModel:
    torch.manual_seed(seed)
    mcfg = ModelConfig(vocab_size=v.size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                       max_seq_len=max_seq_len)
    return OmniModel(Decoder(mcfg), omni_config(), v, codec(v.audio_codebooks, v.audio_codes).quantizer.codebooks).eval()


def config(m: OmniModel) -> Config:
    """The Config a checkpoint of ``m`` would carry."""
    cfg = Config(task="omni", model=m.decoder.cfg)
    cfg.extra["omni"] = omni_config()
    return cfg


def setup(folder: Path, vocoder: Optional[str] = None, **kw):
    """(text tokenizer, codec, vocab, format, model); ``vocoder`` as in :func:`codec`."""
    tok = text_tokenizer(folder)
    c = codec(vocoder=vocoder)
    v = vocab(tok, c)
    return tok, c, v, ConversationFormat(tok, v), model(v, **kw)


def memorise(m: OmniModel, fmt: ConversationFormat, conversations: list, steps: int = 300, lr: float = 3e-3) -> float:
    """Train ``m`` on the conversations (one per row) until it reproduces them; returns the last loss."""
    batch = batch_from_streams([fmt.serialise(c) for c in conversations], fmt.sp["<|pad|>"])
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.0)
    m.train()
    torch.manual_seed(0)
    for _ in range(steps):
        loss, _ = omni_loss(m, batch, fmt.sp["<|text_pad|>"], text_pad_weight=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    return float(loss.detach())


def write_checkpoint(bot, v: OmniVocab, tok, folder: Path) -> None:
    """A step folder as the omni task writes it (weights, config, vocab, tokenizers) for an OmniChat
    ``bot`` built from these fixtures; ``OmniChat.load(folder)`` reads it back."""
    folder.mkdir(parents=True)
    save_file({k: t.contiguous() for k, t in bot.model.state_dict().items()}, str(folder / "model.safetensors"))
    save_config(bot.cfg, folder / "config.yaml")
    (folder / "trainer.json").write_text(json.dumps({"step": 1}))
    (folder / "vocab.json").write_text(json.dumps(v.to_dict()))
    for name, t in (("text", tok), ("codec", bot.codec), ("image", bot.image_tok), ("video", bot.video_tok)):
        t.save(folder / "tokenizers" / name)


def one_thread():
    """Fixture body: tiny models run fastest on one thread (and do not fight other processes)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def damaged_copy(folder: Path, dest: Path, name: str) -> Path:
    """A copy of the shipped-asset ``folder`` at ``dest`` whose file ``name`` has its last byte
    flipped, which a sha256 check must refuse; returns ``dest``."""
    shutil.copytree(folder, dest)
    data = bytearray((dest / name).read_bytes())
    data[-1] ^= 1
    (dest / name).write_bytes(bytes(data))
    return dest
