"""Offline any-to-any generation: conversations in, the assistant's next message of each out."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

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


def prefill(model: OmniModel, streams: Sequence[Stream]) -> Tensor:
    """Append each stream to its row's KV cache in one batched call (shorter rows padded; each row's
    cache offset is then set to its own length, so the padding is never visible and is overwritten
    by the next positions); the hidden state at each row's last position [B, dim]."""
    dev = model.decoder.tok_embeddings.weight.device
    lens = torch.tensor([len(s) for s in streams])
    B, S, K = len(streams), int(lens.max()), model.n_codebooks
    tokens = torch.zeros(B, S, dtype=torch.long)
    audio = torch.full((B, S, K), -1, dtype=torch.long)
    span = torch.zeros(B, S, dtype=torch.long)
    for b, s in enumerate(streams):
        tokens[b, : len(s)], audio[b, : len(s)], span[b, : len(s)] = s.tokens, s.audio, s.span
    mask = AttentionMask(span_ids=span.to(dev)) if bool((span > 0).any()) else None
    start = model.decoder.streaming_offset.clone()
    hidden = model(tokens.to(dev), audio.to(dev), mask=mask)
    model.decoder.set_streaming_offset(start + lens.to(start.device))
    return hidden[torch.arange(B, device=dev), (lens - 1).to(dev)]


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
    (omni/infer/compile.py). One conversation of :func:`generate_replies`.
    """
    return generate_replies(model, fmt, [messages], reply_in_speech=reply_in_speech, max_new_tokens=max_new_tokens,
                            sampling=sampling, audio_sampling=audio_sampling, generator=generator, compile=compile)[0]


@torch.no_grad()
def generate_replies(model: OmniModel, fmt: ConversationFormat, conversations: Sequence[list[Message]], *,
                     reply_in_speech: bool = False, max_new_tokens: int = 512,
                     sampling: SamplingConfig = SamplingConfig(), audio_sampling: Optional[SamplingConfig] = None,
                     generator: Optional[torch.Generator] = None, compile: bool = False) -> list[Reply]:
    """The assistant's reply to each of B conversations, decoded together: one row of the KV cache
    per conversation, one batched decoder call per position (rows that finished feed padding at a
    fixed cache position until the last row finishes). Stopping rules per row as :func:`generate_reply`.

    Each row feeds exactly the positions it would alone, so with greedy sampling (the default) each
    reply is the one :func:`generate_reply` gives for its conversation, up to the float rounding of
    batched matrix products (tests/infer/test_reply.py); with temperature > 0 the rows draw from one
    ``generator`` together, so the draws differ from B separate calls.

    Raises ValueError if a conversation does not fit the model's context."""
    prompts = [fmt.serialise(m, add_generation_prompt=True, reply_in_speech=reply_in_speech) for m in conversations]
    if not prompts:
        return []
    room = torch.tensor([model.max_seq_len - len(p) for p in prompts])
    if bool((room <= 0).any()):
        b = int(room.argmin())
        raise ValueError(f"conversation {b} takes {len(prompts[b])} positions, the model's context is "
                         f"{model.max_seq_len}: shorten it (fewer/shorter audio, images, video)")
    B, K = len(prompts), model.n_codebooks
    was_training = model.training
    model.eval()
    toks: list[Tensor] = []  # per step: [B] tokens, [B, K] codes
    codes: list[Tensor] = []
    dec = Decoding(model, fmt.vocab, sampling, audio_sampling, generator, compile=compile)
    pad = fmt.sp["<|pad|>"]
    try:
        with dec.streaming(B):
            hidden = prefill(model, prompts)
            dev = hidden.device
            dec.start(torch.ones(B, dtype=torch.bool, device=dev), AUDIO if reply_in_speech else TEXT)
            n = torch.zeros(B, dtype=torch.long)  # positions generated per row
            stopped = torch.zeros(B, dtype=torch.bool)
            truncated = torch.zeros(B, dtype=torch.bool)
            while True:
                mode = dec.mode.cpu()
                drawing = (mode == IMAGE) | (mode == IMAGE_END)  # an image once begun is finished
                cut = ~stopped & (n >= max_new_tokens) & ~drawing
                truncated |= cut
                stopped |= cut
                if bool(stopped.all()):
                    break
                tok, code = dec.choose(hidden, (~stopped).to(dev))
                tok, code = tok.cpu(), code.cpu()
                live = ~stopped
                toks.append(torch.where(live, tok, -1))
                codes.append(torch.where(live[:, None], code, -1))
                n += live.long()
                done = dec.done.cpu()
                full = live & ~done & (n == room)
                truncated |= full
                stopped |= live & (done | full)
                if bool(stopped.all()):
                    break
                # Stopped rows feed padding at a fixed position (their offset is held), so no row
                # runs past its context while others go on.
                offset = model.decoder.streaming_offset.clone()
                hidden = dec.feed(torch.where(stopped, pad, tok).to(dev), torch.where(stopped[:, None], -1, code).to(dev))
                held = stopped.to(offset.device)
                model.decoder.set_streaming_offset(torch.where(held, offset, model.decoder.streaming_offset))
            modes = dec.mode.cpu()
    finally:
        model.train(was_training)
    T = torch.stack(toks, 1) if toks else torch.zeros(B, 0, dtype=torch.long)
    C = torch.stack(codes, 1) if codes else torch.zeros(B, 0, K, dtype=torch.long)
    return [_reply(fmt, T[b, : int(n[b])], C[b, : int(n[b])], int(modes[b]), bool(truncated[b]), reply_in_speech, K)
            for b in range(B)]


def _reply(fmt: ConversationFormat, tokens: Tensor, audio: Tensor, mode: int, truncated: bool, reply_in_speech: bool,
           K: int) -> Reply:
    """One row's generated positions (tokens [S], audio [S, K]) as a :class:`Reply`."""
    if mode in (IMAGE, IMAGE_END):  # the context ran out inside an image: drop it
        start = max(i for i, t in enumerate(tokens.tolist()) if t == fmt.sp["<|image_start|>"])
        tokens, audio = tokens[:start], audio[:start]
    if reply_in_speech:  # parse the reply with the opening marker the prompt supplied
        tokens = torch.cat([torch.tensor([fmt.sp["<|audio_start|>"]]), tokens])
        audio = torch.cat([torch.full((1, K), -1), audio])
    stream = Stream.of(tokens, audio)
    return Reply(fmt.parse_parts(stream), stream, truncated)
