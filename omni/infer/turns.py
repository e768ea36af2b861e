"""Turn-taking of a spoken conversation as data: the state of B rows in [B] tensors and the rules
that advance it, one codec frame at a time, as pure functions (no model, no audio).

    IDLE ──speech or end_turn──► LISTEN ──end_turn, or heard speech then end_frames of silence──► RESPOND
      ▲                             ▲                                                             │
      └────────── reply ends ───────┼──── interrupt, or barge_frames of speech (barge-in) ─────────┘

* **IDLE**: nobody speaks. The latest ``preroll_frames`` input frames are kept, so that a turn
  opened by speech starts a little before the frame that was detected (the first syllable).
* **LISTEN**: the user's turn is open; every input frame joins it.
* **RESPOND**: the assistant speaks, one frame per tick; input frames only count towards barge-in,
  and the run of speech frames that interrupts a reply opens the next user turn.

:func:`advance_turns` takes one input frame per row; :func:`end_turns` honours an explicit end of
turn that arrives without a new frame (the input ended on a frame boundary);
:func:`finish_replies` ends replies once the decoder closed them or they reached their length.
:class:`omni.infer.session.SpeechSession` reads the events to assemble the positions it feeds.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import IntEnum

import torch

Tensor = torch.Tensor


class Phase(IntEnum):
    """Where a row's conversation stands."""

    IDLE = 0
    LISTEN = 1
    RESPOND = 2


@dataclass(frozen=True)
class TurnRules:
    """Serving knobs in frames. ``end_frames`` / ``barge_frames`` = 0 turn the voice rule off: turns
    then end, and replies are interrupted, only explicitly (a session without a VAD)."""

    max_reply_frames: int
    end_frames: int = 0  # silent frames after heard speech that end the user's turn
    barge_frames: int = 0  # consecutive speech frames during a reply that interrupt it
    preroll_frames: int = 2  # frames before the detected onset that open a user turn


@dataclass
class SessionState:
    """Turn-taking state of B rows; every field is a [B] tensor."""

    phase: Tensor  # long, a Phase
    heard: Tensor  # bool: speech was heard in the open user turn
    silence: Tensor  # long: frames since the last speech in the open user turn
    onset: Tensor  # long: consecutive speech frames while responding
    recent: Tensor  # long: latest input frames (the current one included) kept to open a user turn with
    reply_frames: Tensor  # long: audio frames of the current reply

    @classmethod
    def start(cls, batch: int) -> "SessionState":
        """B idle rows."""
        zeros = torch.zeros(batch, dtype=torch.long)
        return cls(zeros.clone(), torch.zeros(batch, dtype=torch.bool), zeros.clone(), zeros.clone(), zeros.clone(),
                   zeros.clone())

    def where(self, rows: Tensor, other: "SessionState") -> "SessionState":
        """Row-wise choice: this state where ``rows`` [B] bool, ``other`` elsewhere."""
        return SessionState(*(torch.where(rows, a, b) for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))


@dataclass
class TurnEvents:
    """What one tick did to each row; every field is a [B] tensor."""

    user_start: Tensor  # bool: a user turn opened from IDLE
    barge_in: Tensor  # bool: the reply was interrupted; a user turn opened
    turn_end: Tensor  # bool: the user's turn ended; the reply starts this tick
    opening: Tensor  # long: latest input frames the newly opened user turn starts with
    listen: Tensor  # bool: this tick's frame joins a user turn that was already open
    # long: silent frames that close a turn ending now after heard speech (this tick's frame included)
    trailing: Tensor

    NAMES = ("user_start", "barge_in", "turn_end")

    def named(self) -> list[tuple[int, str]]:
        """(row, name) pairs, row by row, in the order they happened."""
        flags = [getattr(self, n).tolist() for n in self.NAMES]
        return [(b, n) for b in range(len(flags[0])) for n, f in zip(self.NAMES, flags) if f[b]]


def _close_turns(state: SessionState, rows: Tensor) -> SessionState:
    """``rows`` [B] bool end their user turn: the reply starts from zero frames."""
    zero = torch.zeros_like(state.onset)
    return dataclasses.replace(
        state, phase=torch.where(rows, int(Phase.RESPOND), state.phase), onset=torch.where(rows, zero, state.onset),
        recent=torch.where(rows, zero, state.recent), reply_frames=torch.where(rows, zero, state.reply_frames))


def advance_turns(state: SessionState, speech: Tensor, end_turn: Tensor, interrupt: Tensor,
                  rules: TurnRules) -> tuple[SessionState, TurnEvents]:
    """One input frame per row.

    Args:
        state: before this frame.
        speech: [B] bool, the frame holds speech (VAD; without a VAD, any sound).
        end_turn: [B] bool, explicit end of the user's turn after this frame.
        interrupt: [B] bool, explicit barge-in (honoured only while responding).
        rules: thresholds in frames.
    Returns:
        (state after this frame, events). Rows whose new phase is RESPOND produce an output frame
        this tick (a reply that goes on, or one that starts).
    """
    idle, listen, respond = (state.phase == p for p in Phase)
    one = torch.ones_like(state.recent)
    # RESPOND: the user's voice held for barge_frames (or an explicit interrupt) ends the reply; the
    # run of speech frames that did it opens the next user turn (at least the current frame).
    voice = respond & speech & (rules.barge_frames > 0)
    onset = torch.where(voice, state.onset + 1, 0)
    run = torch.where(voice, torch.minimum(state.recent + 1, one * max(rules.barge_frames, 1)), 0)
    barge = respond & (interrupt | (voice & (onset >= rules.barge_frames)))
    # IDLE: speech or an explicit end opens a turn with the kept frames before this one.
    start = idle & (speech | end_turn)
    kept = torch.minimum(state.recent + 1, one * rules.preroll_frames)
    opening = torch.where(start, state.recent + 1, torch.where(barge, torch.maximum(run, one), 0))
    recent = torch.where(idle & ~start, kept, torch.where(respond & ~barge, run, torch.where(listen, state.recent, 0)))
    # LISTEN (including turns opened now): silence after heard speech, or an explicit end, closes it.
    heard = torch.where(start, speech, torch.where(barge, True, state.heard | (listen & speech)))
    silence = torch.where(listen & ~speech, state.silence + 1, 0)
    open_ = listen | start | barge
    by_voice = heard & (silence >= rules.end_frames) if rules.end_frames > 0 else torch.zeros_like(heard)
    end = open_ & (end_turn | by_voice)
    phase = torch.where(start | barge, int(Phase.LISTEN), state.phase)
    new = SessionState(phase, heard, silence, torch.where(respond & ~barge, onset, 0),
                       recent, state.reply_frames)
    trailing = torch.where(end & heard, silence, 0)
    return _close_turns(new, end), TurnEvents(start, barge, end, opening, listen, trailing)


def end_turns(state: SessionState, end_turn: Tensor) -> tuple[SessionState, TurnEvents]:
    """An explicit end of turn with no new input frame (the input ended on a frame boundary).

    IDLE rows open a user turn with the frames they kept and close it at once; LISTEN rows close
    theirs; responding rows ignore it. Nothing else moves: no time passed.
    """
    idle, listen = state.phase == Phase.IDLE, state.phase == Phase.LISTEN
    start, end = idle & end_turn, (idle | listen) & end_turn
    none = torch.zeros_like(end)
    opening = torch.where(start, state.recent, 0)
    trailing = torch.where(listen & end & state.heard, state.silence, 0)
    return _close_turns(state, end), TurnEvents(start, none, end, opening, none, trailing)


def finish_replies(state: SessionState, chose: Tensor, frame: Tensor, done: Tensor,
                   rules: TurnRules) -> tuple[SessionState, Tensor, Tensor]:
    """After the rows in ``chose`` [B] bool sampled a position (``frame`` [B]: it is an audio frame;
    ``done`` [B]: the decoder closed the reply with <|end_of_turn|>).

    Returns (state, ended [B] bool: the reply is over and the row is IDLE again, cut [B] bool: it
    ended at ``max_reply_frames`` and the session must close it as the model would have).
    """
    reply_frames = state.reply_frames + (chose & frame).long()
    ended = chose & (done | (reply_frames >= rules.max_reply_frames))
    phase = torch.where(ended, int(Phase.IDLE), state.phase)
    return dataclasses.replace(state, phase=phase, reply_frames=reply_frames), ended, ended & ~done
