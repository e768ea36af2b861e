"""Offline any-to-any generation: a conversation in, the assistant's next message out."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from omni.conversation import ConversationFormat, Message, Part, Stream
from omni.infer.decoding import AUDIO, TEXT, Decoding
from omni.model.attention import AttentionMask
from omni.model.generate import SamplingConfig
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
                   generator: Optional[torch.Generator] = None) -> Reply:
    """Generate the assistant's reply to ``messages`` (text, speech frames and/or images).

    ``reply_in_speech`` opens the reply with ``<|audio_start|>`` (what the speech session does);
    otherwise the model chooses the modality. Generation stops at ``<|end_of_turn|>``, after
    ``max_new_tokens`` positions, or when the context is full.
    """
    prompt = fmt.serialise(messages, add_generation_prompt=True, reply_in_speech=reply_in_speech)
    budget = min(max_new_tokens, model.max_seq_len - len(prompt))
    if budget <= 0:
        raise ValueError(f"the conversation takes {len(prompt)} positions, the model's context is "
                         f"{model.max_seq_len}: shorten it (fewer/shorter audio, images, video)")
    was_training = model.training
    model.eval()
    toks, codes = [], []
    try:
        with model.streaming(1):
            hidden = prefill(model, prompt)
            dec = Decoding(model, fmt.vocab, 1, sampling, audio_sampling, generator)
            dec.start(torch.ones(1, dtype=torch.bool), AUDIO if reply_in_speech else TEXT)
            for _ in range(budget):
                tok, code = dec.choose(hidden)
                toks.append(tok)
                codes.append(code)
                if bool(dec.done.all()) or len(toks) == budget:
                    break
                hidden = model(tok[:, None], code[:, None])[:, -1]
    finally:
        model.train(was_training)
    tokens, audio = torch.cat(toks).cpu(), torch.cat(codes).cpu()
    truncated = not bool(dec.done.all())
    if reply_in_speech:  # parse the reply with the opening marker the prompt supplied
        tokens = torch.cat([torch.tensor([fmt.sp["<|audio_start|>"]]), tokens])
        audio = torch.cat([torch.full((1, model.K), -1), audio])
    stream = Stream.of(tokens, audio)
    return Reply(fmt.parse_parts(stream), stream, truncated)
