"""Offline any-to-any generation: a conversation in, the assistant's next message out."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from omni.conversation import ConversationFormat, Message, Part, Stream
from omni.infer.decoding import AUDIO, IMAGE, IMAGE_END, TEXT, Decoding
from omni.model.attention import AttentionMask
from omni.model.sampling import SamplingConfig
from omni.model.omni import OmniModel

Tensor = torch.Tensor


@dataclass
class Reply:
    """The generated assistant message: its parts and raw stream (tokens [S], audio [S, K])."""

    parts: list[Part]
    stream: Stream
    truncated: bool  # hit max_new_tokens or the context before <|end_of_turn|>


def prefill(model: OmniModel, stream: Stream) -> Tensor:
    """Append ``stream`` to row 0's KV cache in one call; the last hidden state [1, dim]."""
    mask = AttentionMask(span_ids=stream.span[None]) if bool((stream.span > 0).any()) else None
    dev = model.decoder.tok_embeddings.weight.device
    return model(stream.tokens[None].to(dev), stream.audio[None].to(dev), mask=mask)[:, -1]


@torch.no_grad()
def generate_reply(model: OmniModel, fmt: ConversationFormat, messages: list[Message], *,
                   reply_in_speech: bool = False, max_new_tokens: int = 512,
                   sampling: SamplingConfig = SamplingConfig(), audio_sampling: Optional[SamplingConfig] = None,
                   generator: Optional[torch.Generator] = None, compile: bool = False) -> Reply:
    """Generate the assistant's reply to ``messages`` (text, speech frames and/or images).

    ``reply_in_speech`` opens the reply with ``<|audio_start|>`` (what the speech session does);
    otherwise the model chooses the modality. Generation stops at ``<|end_of_turn|>``, after
    ``max_new_tokens`` positions (an image already begun is completed first), or when the context
    is full (an unfinished image is then dropped). ``compile``: the fast decode path
    (omni/infer/compile.py).
    """
    prompt = fmt.serialise(messages, add_generation_prompt=True, reply_in_speech=reply_in_speech)
    room = model.max_seq_len - len(prompt)
    if room <= 0:
        raise ValueError(f"the conversation takes {len(prompt)} positions, the model's context is "
                         f"{model.max_seq_len}: shorten it (fewer/shorter audio, images, video)")
    was_training = model.training
    model.eval()
    toks, codes = [], []
    dec = Decoding(model, fmt.vocab, sampling, audio_sampling, generator, compile=compile)
    try:
        with dec.streaming(1):
            hidden = prefill(model, prompt)
            dec.start(torch.ones(1, dtype=torch.bool), AUDIO if reply_in_speech else TEXT)
            for _ in range(room):
                drawing = int(dec.mode[0]) in (IMAGE, IMAGE_END)  # an image once begun is finished
                if len(toks) >= max_new_tokens and not drawing:
                    break
                tok, code = dec.choose(hidden)
                toks.append(tok)
                codes.append(code)
                if bool(dec.done.all()) or len(toks) == room:
                    break
                hidden = dec.feed(tok, code)
            mode, truncated = int(dec.mode[0]), not bool(dec.done.all())
    finally:
        model.train(was_training)
    if mode in (IMAGE, IMAGE_END):  # the context ran out inside an image: drop it
        start = max(i for i, t in enumerate(toks) if int(t) == fmt.sp["<|image_start|>"])
        toks, codes = toks[:start], codes[:start]
    tokens = torch.cat(toks).cpu() if toks else torch.zeros(0, dtype=torch.long)
    audio = torch.cat(codes).cpu() if codes else torch.zeros(0, model.n_codebooks, dtype=torch.long)
    if reply_in_speech:  # parse the reply with the opening marker the prompt supplied
        tokens = torch.cat([torch.tensor([fmt.sp["<|audio_start|>"]]), tokens])
        audio = torch.cat([torch.full((1, model.n_codebooks), -1), audio])
    stream = Stream.of(tokens, audio)
    return Reply(fmt.parse_parts(stream), stream, truncated)
