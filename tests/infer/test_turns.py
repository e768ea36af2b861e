"""Turn-taking rules as pure functions on [B] tensors: no model, no audio."""
import torch

from omni.infer.turns import Phase, SessionState, TurnRules, advance_turns, end_turns, finish_replies

VAD = TurnRules(max_reply_frames=4, end_frames=3, barge_frames=2, preroll_frames=2)
NO_VAD = TurnRules(max_reply_frames=4)


def flags(*xs):
    return torch.tensor(xs, dtype=torch.bool)


def run(state, rules, speech, end=None, interrupt=None):
    """Advance one row through a sequence of frames; the events' names per frame."""
    names = []
    for i, s in enumerate(speech):
        e = flags(bool(end and end[i]))
        x = flags(bool(interrupt and interrupt[i]))
        state, ev = advance_turns(state, flags(s), e, x, rules)
        names.append([n for _, n in ev.named()])
    return state, names


def test_idle_keeps_a_preroll_and_speech_opens_a_turn_with_it():
    state, names = run(SessionState.start(1), VAD, [0, 0, 0])
    assert names == [[], [], []] and int(state.recent[0]) == 2 and state.phase[0] == Phase.IDLE
    state, ev = advance_turns(state, flags(1), flags(0), flags(0), VAD)
    assert ev.named() == [(0, "user_start")] and int(ev.opening[0]) == 3  # two kept + this one
    assert state.phase[0] == Phase.LISTEN and bool(state.heard[0]) and int(state.recent[0]) == 0


def test_silence_after_speech_ends_the_turn_and_starts_the_reply():
    state, names = run(SessionState.start(1), VAD, [1, 1, 0, 0])
    assert names == [["user_start"], [], [], []]
    state, ev = advance_turns(state, flags(0), flags(0), flags(0), VAD)
    assert ev.named() == [(0, "turn_end")] and int(ev.trailing[0]) == 3  # the silent frames that ended it
    assert state.phase[0] == Phase.RESPOND and int(state.reply_frames[0]) == 0
    # an explicit end after speech and one silent frame; one with no speech heard has no trailing silence
    state, _ = run(SessionState.start(1), VAD, [1, 0])
    assert int(advance_turns(state, flags(0), flags(1), flags(0), VAD)[1].trailing[0]) == 2
    assert int(end_turns(state, flags(1))[1].trailing[0]) == 1
    state, _ = run(SessionState.start(1), NO_VAD, [0, 0])
    assert int(advance_turns(state, flags(0), flags(1), flags(0), NO_VAD)[1].trailing[0]) == 0


def test_silence_alone_never_ends_a_turn_and_no_vad_ends_only_explicitly():
    state, _ = run(SessionState.start(1), VAD, [0] * 6)
    assert state.phase[0] == Phase.IDLE
    # without a VAD any sound opens a turn, and only end_turn closes it however long the silence
    state, names = run(SessionState.start(1), NO_VAD, [1] + [0] * 8)
    assert names[0] == ["user_start"] and state.phase[0] == Phase.LISTEN
    state, ev = advance_turns(state, flags(0), flags(1), flags(0), NO_VAD)
    assert ev.named() == [(0, "turn_end")] and state.phase[0] == Phase.RESPOND


def test_explicit_end_while_idle_opens_and_closes_a_turn_at_once():
    state, ev = advance_turns(SessionState.start(1), flags(0), flags(1), flags(0), NO_VAD)
    assert ev.named() == [(0, "user_start"), (0, "turn_end")] and int(ev.opening[0]) == 1


def test_barge_in_needs_held_speech_and_opens_with_the_speech_run():
    state, names = run(SessionState.start(1), VAD, [1, 0, 0, 0])  # -> RESPOND
    assert state.phase[0] == Phase.RESPOND
    state, names = run(state, VAD, [1, 0, 1])  # short blips: no barge-in
    assert names == [[], [], []] and state.phase[0] == Phase.RESPOND and int(state.onset[0]) == 1
    state, ev = advance_turns(state, flags(1), flags(0), flags(0), VAD)
    assert ev.named() == [(0, "barge_in")] and int(ev.opening[0]) == 2
    assert state.phase[0] == Phase.LISTEN and bool(state.heard[0]) and int(state.onset[0]) == 0


def test_explicit_interrupt_opens_with_the_current_frame_and_no_vad_never_barges_in():
    state, _ = run(SessionState.start(1), NO_VAD, [1], end=[1])
    state, names = run(state, NO_VAD, [1] * 5)  # loud input while responding: no VAD, no barge-in
    assert names == [[]] * 5 and state.phase[0] == Phase.RESPOND
    state, ev = advance_turns(state, flags(1), flags(0), flags(1), NO_VAD)
    assert ev.named() == [(0, "barge_in")] and int(ev.opening[0]) == 1


def test_end_without_a_frame():
    """The input ended on a frame boundary: IDLE and LISTEN rows close their turn, responding rows
    ignore it, and nothing else moves."""
    state, _ = run(SessionState.start(1), NO_VAD, [0, 0, 0])  # idle, two frames kept
    listening, _ = run(SessionState.start(1), NO_VAD, [1, 1])
    responding, _ = run(SessionState.start(1), NO_VAD, [1], end=[1])
    rows = SessionState(*(torch.cat(t) for t in zip(*(s.__dict__.values() for s in (state, listening, responding)))))
    new, ev = end_turns(rows, flags(1, 1, 1))
    assert ev.named() == [(0, "user_start"), (0, "turn_end"), (1, "turn_end")]
    assert ev.opening.tolist() == [2, 0, 0]
    assert new.phase.tolist() == [Phase.RESPOND] * 3
    untouched, _ = end_turns(rows, flags(0, 0, 0))
    assert all(torch.equal(a, b) for a, b in zip(untouched.__dict__.values(), rows.__dict__.values()))


def test_rows_are_independent():
    state = SessionState.start(3)
    state, ev = advance_turns(state, flags(1, 0, 0), flags(0, 0, 1), flags(0, 0, 0), VAD)
    assert ev.named() == [(0, "user_start"), (2, "user_start"), (2, "turn_end")]
    assert state.phase.tolist() == [Phase.LISTEN, Phase.IDLE, Phase.RESPOND]


def test_replies_end_when_closed_or_at_their_length():
    state, _ = run(SessionState.start(2), NO_VAD, [1], end=[1])
    state = SessionState(*(t.expand(2).clone() for t in state.__dict__.values()))
    chose, frame = flags(1, 1), flags(1, 1)
    for _ in range(3):
        state, ended, cut = finish_replies(state, chose, frame, flags(0, 0), NO_VAD)
        assert not ended.any()
    state, ended, cut = finish_replies(state, chose, frame, flags(1, 0), NO_VAD)
    assert ended.tolist() == [True, True] and cut.tolist() == [False, True]  # row 1 hit max_reply_frames=4
    assert state.phase.tolist() == [Phase.IDLE, Phase.IDLE] and state.reply_frames.tolist() == [4, 4]
