"""Streaming speech-to-speech: equals offline generation, memorises speech-to-speech pairs through
the streaming path, barge-in (explicit and by VAD) keeps the history consistent, batches of sessions."""
import pytest
import torch

from omni.config import ServingConfig
from omni.conversation import Audio, Message
from omni.infer.chat import OmniChat
from omni.infer.reply import generate_reply
from omni.infer.session import SpeechSession
from omni.io.audio import AudioError, check_finite
from omni.model.sampling import SamplingConfig
from omni.streaming import StreamingModule
from tests import omni_fixtures as F
from omni.data.voices import espeak_voices, synth_at
from omni.infer.vad import VoiceActivity

one_thread = pytest.fixture(autouse=True, scope="module")(F.one_thread)

HOP = 1792  # the codec's frame: 7 HiFi-GAN hops at 22.05 kHz
# The untrained codec's audio is no one's voice: the voice guardrail (tests/infer/test_guardrail.py)
# would stop it, so these turn-taking tests serve without it.
OFF = {"voice_guardrail": False}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return F.setup(tmp_path_factory.mktemp("tok"))


def noise(frames: int, seed: int) -> torch.Tensor:
    return torch.randn(1, 1, frames * HOP, generator=torch.Generator().manual_seed(seed)) * 0.1


def run_turn(sess, wav):
    """Feed a whole user turn (explicit end) and the reply; the TickOutputs of the reply."""
    outs = [o for o in sess.feed(wav, end_turn=True)]
    outs += list(sess.reply())
    return [o for o in outs if bool(o.speaking.any()) or o.events]


def test_streaming_equals_offline(env):
    tok, codec, v, fmt, m = env
    wav = noise(6, 0)
    serving = ServingConfig(max_reply_frames=10, **OFF)
    sampling = SamplingConfig(temperature=1.0)
    offline = generate_reply(m, fmt, [Message("user", Audio(codec.encode(wav)[0]))], reply_in_speech=True,
                             max_new_tokens=10, sampling=sampling, generator=torch.Generator().manual_seed(7))
    with SpeechSession(m, codec, fmt, 1, sampling=sampling, generator=torch.Generator().manual_seed(7), serving=serving) as s:
        outs = run_turn(s, wav)
        log = s.logged_stream(0)
    frames = [o.codes[0] for o in outs if o.speaking[0]]
    ref = offline.stream.audio[offline.stream.audio[:, 0] >= 0]
    assert len(frames) > 0 and torch.equal(torch.stack(frames)[: len(ref)], ref[: len(frames)])
    # the text-stream tokens too: the session's cache holds the same reply positions
    start = int((log.tokens == fmt.sp["<|audio_start|>"]).nonzero()[-1]) + 1  # the reply's first position
    reply, expected = log.tokens[start:], offline.stream.tokens[1:]
    n = min(len(reply), len(expected))
    assert n > 0 and torch.equal(reply[:n], expected[:n])
    # and the output audio is the codec's offline decoding of the reply codes, delayed by the vocoder's
    # lookahead (silence first), within the stream bound; the tick that ends the speech plays the
    # held-back end (the codec's flush), so nothing of the reply is lost
    assert_plays_offline_decoding(codec, outs, 0, torch.stack(frames).T)


def played(outs, row):
    """What the listener of ``row`` hears: its frames while speaking, then any held-back end."""
    return torch.cat([x for o in outs for x in ([o.audio[row, 0]] if o.speaking[row] else [])
                      + ([o.tail[row, 0]] if (row, "speech_end") in o.events else [])])


def assert_plays_offline_decoding(codec, outs, row, codes, settle=0):
    """``row`` played the offline decoding of ``codes`` [K, frames], delayed by the lookahead, whole
    (after its first ``settle`` samples: a row reset mid-stream starts from vocoded silence as its
    past, where offline decoding starts from zero padding)."""
    heard, offline = played(outs, row), codec.decode(codes[None])[0, 0]
    delay = codec.cfg.vocoder_lookahead * 256
    assert heard.shape[0] == offline.shape[0] + delay
    # silence first: zeros, or the vocoded silence (below -60 dBFS) a row reset mid-stream continues from
    assert heard[:delay].abs().max() < 1e-3
    assert sum((row, "speech_end") in o.events for o in outs) == 1  # flushed once, at its end
    assert (heard[delay + settle :] - offline[settle:]).abs().max() <= 1e-3 * offline.abs().max()


@pytest.fixture(scope="module")
def trained(env):
    """The tiny model after memorising three spoken question -> spoken answer pairs."""
    tok, codec, v, fmt, _ = env
    m = F.model(v, seed=1)
    g = torch.Generator().manual_seed(3)
    pairs = []
    for i, text in enumerate(["hello there", "the cat sat", "paris"]):
        question = noise(4 + i, 10 + i)
        answer = torch.randint(0, v.audio_codes, (v.audio_codebooks, 6 + i), generator=g)
        pairs.append((question, answer, text))
    conversations = [[Message("user", Audio(codec.encode(q)[0])), Message("assistant", Audio(a, text=t))] for q, a, t in pairs]
    loss = F.memorise(m, fmt, conversations, steps=120, lr=5e-3)
    return m, pairs, loss


def test_overfit_speech_to_speech_through_the_stream(env, trained):
    """Three concurrent sessions ask the three questions; each gets its memorised answer, exactly."""
    tok, _, v, fmt, _ = env
    codec = F.codec(vocoder="universal")  # the same codec weights; rows that wait play the real vocoder's silence
    m, pairs, loss = trained
    assert loss < 0.05
    n = [q.shape[-1] // HOP for q, _, _ in pairs]
    wav = torch.zeros(3, 1, max(n) * HOP)
    for b, (q, _, _) in enumerate(pairs):
        wav[b, :, : q.shape[-1]] = q
    with SpeechSession(m, codec, fmt, 3, serving=ServingConfig(**OFF)) as s:
        # all rows start together, each ends its turn on its own last frame (later input is ignored:
        # no VAD, so no barge-in) and replies while the others are still listening
        outs = [s.tick(wav[..., t * HOP : (t + 1) * HOP], end_turn=torch.tensor([t == k - 1 for k in n]))
                for t in range(max(n))]
        outs += list(s.reply())
        histories = [s.history(b) for b in range(3)]
    for b, (q, answer, text) in enumerate(pairs):
        codes = torch.stack([o.codes[b] for o in outs if o.speaking[b]]).T
        assert torch.equal(codes, answer), f"row {b}"
        spoken = histories[b][-1].content[0]
        assert spoken.text == text and not spoken.interrupted
        assert any(name == "reply_end" for o in outs for r, name in o.events if r == b)
        # each row's speech ends on its own tick, closed by <|audio_end|> while others still speak or
        # listen: it hears all of its answer, the held-back end included
        assert_plays_offline_decoding(codec, outs, b, answer, settle=13 * 256)  # HiFi-GAN's reach: ~13 frames


def test_barge_in_cuts_output_and_keeps_history(env, trained):
    tok, codec, v, fmt, _ = env
    m, pairs, _ = trained
    q0, a0, _ = pairs[0]
    with SpeechSession(m, codec, fmt, 1, serving=ServingConfig(**OFF)) as s:
        outs = list(s.feed(q0, end_turn=True))
        said = [o.codes[0] for o in outs if o.speaking[0]]
        for _ in range(2):
            said.append(s.tick(torch.zeros(1, 1, HOP)).codes[0])
        cut = s.tick(noise(1, 99), interrupt=torch.tensor([True]))
        assert not cut.speaking[0] and (0, "barge_in") in cut.events
        # the user keeps talking, then asks the second question; the conversation goes on
        outs = run_turn(s, pairs[1][0])
        hist = s.history(0)
        log = s.logged_stream(0)
        offset = int(m.decoder.streaming_offset[0])
    assert [m_.role for m_ in hist] == ["user", "assistant", "user", "assistant"]
    cut_part = hist[1].content[0]
    assert cut_part.interrupted and torch.equal(cut_part.codes, torch.stack(said).T)  # exactly what was said
    assert torch.equal(cut_part.codes, a0[:, : len(said)])
    # the history serialises back to exactly what the KV cache holds
    assert offset == len(log.tokens)
    again = fmt.serialise(hist)
    assert torch.equal(again.tokens[: len(log.tokens)], log.tokens)
    assert torch.equal(again.audio[: len(log.tokens)], log.audio)


def test_barge_in_drops_unplayed_frames(env, trained):
    """A client with 3 returned frames still in its playback buffer: they leave the history and the cache."""
    tok, codec, v, fmt, _ = env
    m, pairs, _ = trained
    q0, a0, _ = pairs[0]
    with SpeechSession(m, codec, fmt, 1, serving=ServingConfig(**OFF)) as s:
        returned = [o.codes[0] for o in s.feed(q0, end_turn=True) if o.speaking[0]]
        returned += [s.tick(torch.zeros(1, 1, HOP)).codes[0] for _ in range(4)]
        s.tick(noise(1, 98), interrupt=torch.tensor([True]), unplayed=torch.tensor([3]))
        hist, log = s.history(0), s.logged_stream(0)
        assert int(m.decoder.streaming_offset[0]) == len(log.tokens)
    heard = len(returned) - 3
    cut = hist[1].content[0]
    assert cut.interrupted and torch.equal(cut.codes, a0[:, :heard])
    assert torch.equal(fmt.serialise(hist).tokens[: len(log.tokens)], log.tokens)


def test_barge_in_by_voice_in_a_batch(env, trained):
    """Row 0 is interrupted by real (synthetic) speech detected by Silero VAD; row 1 is not and its
    reply is the same as when it is served alone."""
    pytest.importorskip("silero_vad")
    pytest.importorskip("espeakng_loader")
    tok, codec, v, fmt, _ = env
    m, pairs, _ = trained
    speech = synth_at(espeak_voices(1)[0], "stop, wait a moment please", codec.sample_rate)[None, None] * 0.8
    q = pairs[0][0]
    vad = VoiceActivity(codec.sample_rate)
    serving = ServingConfig(barge_in_ms=160, end_of_turn_ms=10_000, **OFF)
    with SpeechSession(m, codec, fmt, 2, vad=vad, serving=serving) as s:
        list(s.feed(q.repeat(2, 1, 1), end_turn=True))
        events, row1 = [], []
        for i in range(0, speech.shape[-1] - HOP, HOP):
            chunk = torch.cat([speech[..., i : i + HOP], torch.zeros(1, 1, HOP)])
            o = s.tick(chunk)
            events += o.events
            if o.speaking[1]:
                row1.append(o.codes[1])
        row1 += [o.codes[1] for o in s.reply() if o.speaking[1]]
        assert (0, "barge_in") in events and not any(r == 1 and n == "barge_in" for r, n in events)
        assert s.history(0)[1].content[0].interrupted
    with SpeechSession(m, codec, fmt, 1, serving=ServingConfig(**OFF)) as s:
        alone = [o.codes[0] for o in run_turn(s, q) if o.speaking[0]]
    assert len(row1) >= 1 and torch.equal(torch.stack(row1), torch.stack(alone)[1 : 1 + len(row1)])


class DeafVAD(StreamingModule):
    """A VAD that never hears speech (the issue's 'VAD that never fires')."""

    def forward(self, wav):
        return torch.zeros(wav.shape[0])


class ScriptedVAD(StreamingModule):
    """Speech in the first ``speech`` frames it hears, silence after."""

    def __init__(self, speech: int) -> None:
        super().__init__()
        self.speech, self.heard = speech, 0

    def forward(self, wav):
        self.heard += 1
        return torch.full((wav.shape[0],), float(self.heard <= self.speech))


@pytest.mark.parametrize("keep_ms, kept", [(160, 2), (0, 0), (10_000, 6)])
def test_a_turn_ended_by_silence_keeps_only_end_of_turn_keep_ms_of_it(env, keep_ms, kept):
    """4 frames of speech, then the VAD's 6 silent frames end the turn: the model reads the speech
    and ``kept`` silent frames, exactly the stream and reply of a turn ended by hand after them."""
    tok, codec, v, fmt, m = env
    wav = noise(10, 3)
    serving = ServingConfig(max_reply_frames=4, end_of_turn_ms=480, end_of_turn_keep_ms=keep_ms, **OFF)
    with SpeechSession(m, codec, fmt, 1, vad=ScriptedVAD(4), serving=serving) as s:
        outs = list(s.feed(wav))
        assert (0, "turn_end") in outs[-1].events
        reply = [o.codes[0] for o in outs + list(s.reply()) if o.speaking[0]]
        log = s.logged_stream(0)
    with SpeechSession(m, codec, fmt, 1, serving=serving) as s:
        ref = [o.codes[0] for o in run_turn(s, wav[..., : (4 + kept) * HOP]) if o.speaking[0]]
        assert torch.equal(s.logged_stream(0).tokens, log.tokens)
        assert torch.equal(s.logged_stream(0).audio, log.audio)
    assert torch.equal(torch.stack(reply), torch.stack(ref))


@pytest.mark.parametrize("chunk", [HOP, 1000])
@pytest.mark.parametrize("vad", [False, True])
def test_explicit_end_of_turn_on_a_frame_boundary_is_honoured(env, chunk, vad):
    """6 whole frames fed in 80 ms or 1000-sample chunks, then end_turn with an empty chunk: the row
    answers (issue 19, case 2); without a VAD the reply is the one the end on the last chunk gets."""
    tok, codec, v, fmt, m = env
    wav = noise(6, 0)
    serving = ServingConfig(max_reply_frames=5, **OFF)
    with SpeechSession(m, codec, fmt, 1, vad=DeafVAD() if vad else None, serving=serving) as s:
        outs = [o for i in range(0, wav.shape[-1], chunk) for o in s.feed(wav[..., i : i + chunk])]
        ended = list(s.feed(torch.zeros(1, 1, 0), end_turn=True))
        assert len(ended) == 1 and (0, "turn_end") in ended[0].events and ended[0].speaking[0]
        frames = [o.codes[0] for o in outs + ended + list(s.reply()) if o.speaking[0]]
        log = s.logged_stream(0)
    assert len(frames) == 5
    if not vad:  # the same turn (6 frames, no padding frame) and so the same greedy reply
        with SpeechSession(m, codec, fmt, 1, serving=serving) as s:
            ref = [o.codes[0] for o in run_turn(s, wav) if o.speaking[0]]
            assert torch.equal(s.logged_stream(0).tokens, log.tokens)
        assert torch.equal(torch.stack(frames), torch.stack(ref))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_chunk_with_a_non_finite_sample_is_refused_and_changes_nothing(env, bad):
    """Issue 19, case 9: the chunk is refused with the offline path's message, nothing is consumed,
    and the conversation goes on exactly as if the chunk had never come, for every row."""
    tok, codec, v, fmt, m = env
    wav = torch.cat([noise(6, 0), noise(6, 1)])
    serving = ServingConfig(max_reply_frames=5, **OFF)
    poisoned = wav[..., :HOP].clone()
    poisoned[0, 0, 100] = bad

    def serve(refuse_first: bool):
        with SpeechSession(m, codec, fmt, 2, serving=serving) as s:
            if refuse_first:
                with pytest.raises(AudioError, match="row\\(s\\) \\[0\\]: holds NaN or infinite samples"):
                    s.feed(poisoned)
                with pytest.raises(AudioError, match="holds NaN or infinite samples"):
                    s.tick(poisoned)
            outs = run_turn(s, wav)
            return [o.codes for o in outs], s.logged_stream(0), s.logged_stream(1)

    clean, refused = serve(False), serve(True)
    assert len(clean[0]) > 0 and all(torch.equal(a, b) for a, b in zip(clean[0], refused[0]))
    assert len(clean[0]) == len(refused[0])
    for a, b in zip(clean[1:], refused[1:]):
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.audio, b.audio)
    with pytest.raises(AudioError, match="holds NaN or infinite samples"):  # the offline path's words
        check_finite(poisoned)


def test_the_vad_refuses_non_finite_audio_and_keeps_its_state():
    pytest.importorskip("silero_vad")
    vad = VoiceActivity(16000)
    clean = noise(3, 5)
    with vad.streaming(1):
        ref = [vad(clean[..., i * HOP : (i + 1) * HOP]) for i in range(3)]
    poisoned = clean[..., :HOP].clone()
    poisoned[0, 0, 7] = float("nan")
    with vad.streaming(1):
        got = [vad(clean[..., :HOP])]
        with pytest.raises(AudioError, match="holds NaN or infinite samples"):
            vad(poisoned)
        got += [vad(clean[..., i * HOP : (i + 1) * HOP]) for i in (1, 2)]
    assert all(torch.equal(a, b) for a, b in zip(ref, got))


def test_omnichat_stream_answers_a_turn_of_whole_frames(env):
    """OmniChat.stream ends the turn when the chunks run out: with 80 ms chunks (whole frames) and no
    VAD that end comes on a frame boundary, and must still be answered."""
    tok, codec, v, fmt, m = env
    bot = OmniChat(m, fmt, codec, F.image_tokenizer(), F.video_tokenizer(), F.config(m), serving=ServingConfig(max_reply_frames=4, **OFF))
    wav = noise(6, 0)[0, 0]
    frames = list(bot.stream([wav[i : i + HOP] for i in range(0, len(wav), HOP)], vad=False))
    # four frames, then the codec's held-back end of the reply (cut at max_reply_frames)
    assert [f.shape for f in frames] == [(HOP,)] * 4 + [(codec.cfg.vocoder_lookahead * 256,)]


def test_restart_resets_one_row_through_the_streaming_mechanism(env, trained):
    """After a turn, row 0 restarts: its next turn is answered as in a fresh session, while row 1
    keeps its conversation."""
    tok, codec, v, fmt, _ = env
    m, pairs, _ = trained
    q0, q1 = pairs[0][0], pairs[1][0]
    with SpeechSession(m, codec, fmt, 1, serving=ServingConfig(**OFF)) as s:
        fresh = [o.codes[0] for o in run_turn(s, q1) if o.speaking[0]]
        fresh_log = s.logged_stream(0)
    with SpeechSession(m, codec, fmt, 2, serving=ServingConfig(**OFF)) as s:
        run_turn(s, q0.repeat(2, 1, 1))
        s.restart(torch.tensor([True, False]))
        assert s.state.phase.tolist() == [0, 0] and int(m.decoder.streaming_offset[0]) == 1  # <|bos|>
        outs = run_turn(s, q1.repeat(2, 1, 1))
        row0 = [o.codes[0] for o in outs if o.speaking[0]]
        assert torch.equal(s.logged_stream(0).tokens, fresh_log.tokens)
        assert [x.role for x in s.history(1)] == ["user", "assistant", "user", "assistant"]
    assert torch.equal(torch.stack(row0), torch.stack(fresh))
