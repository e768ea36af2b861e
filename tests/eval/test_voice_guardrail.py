"""eval/voice_guardrail.py: the threshold rule and the metrics on hand-made scores; the whole
evaluation (labelled sets, codec condition, cost, imitation requests) on the tiny fixtures."""
import json

import pytest
import torch

import omni.eval.voice_guardrail as vg
from omni.config import ServingConfig
from omni.data.spoken_qa import load_spoken_qa
from omni.eval.voice_guardrail import Scored, choose_threshold, evaluate_guardrail, metrics
from omni.infer.chat import OmniChat
from omni.infer.guardrail import load_reference
from tests import omni_fixtures as F


def reply(family, *scores, step=0.5, switch=None):
    """A reply whose checks come every ``step`` s of output from 0.4 s on, with these scores."""
    return Scored("test", "clean", family, f"{family}-{scores}", "text", 5.0,
                  [(0.4 + i * step, s) for i, s in enumerate(scores)], switch_s=switch)


def test_threshold_sits_below_the_preset_spread_else_midpoint_else_fewest_errors():
    val = [reply("piper", 0.8, 0.82), reply("piper", 0.82), reply("piper", 0.84, 0.9), reply("espeak", 0.5, 0.3),
           reply("kokoro", 0.65, 0.4), reply("kokoro", 0.2, 0.9, 0.9, 0.1)]  # its last score comes after 1 s: it does not count
    sel = choose_threshold(val)
    # preset replies' lowest scores 0.8, 0.82, 0.84: mean 0.82, sd 0.02 -> 0.76, above every non-preset
    # reply by 1 s: min(0.5, 0.3), min(0.65, 0.4), min(0.2, 0.9) -> highest 0.4
    assert sel["rule"] == "preset mean - 3 sd" and sel["threshold"] == pytest.approx(0.76)
    assert sel["highest_non_preset"] == 0.4 and sel["lowest_preset"] == 0.8
    spread = [reply("piper", 0.8, 0.7, 0.75), reply("piper", 0.9), *val[3:]]  # mean 0.8, sd 0.14: 0.38 < 0.4
    sel = choose_threshold(spread)
    assert sel["rule"] == "midpoint of the gap" and sel["threshold"] == pytest.approx(0.55)
    overlap = spread + [reply("espeak", 0.72, 0.8)]
    sel = choose_threshold(overlap)
    assert sel["errors"] == 1 and 0.4 < sel["threshold"] < 0.7
    # one score for every reply (no gap): stop everything or nothing, whichever errs less
    same = [reply("piper", 0.5), reply("piper", 0.5), reply("piper", 0.5), reply("espeak", 0.5)]
    sel = choose_threshold(same)
    assert sel["errors"] == 1 and sel["threshold"] == 0.5  # stopping nothing lets the one espeak reply through


def test_metrics_count_stops_in_time_false_stops_and_switches():
    replies = [reply("piper", 0.8, 0.6, 0.9), reply("piper", 0.9, 0.9), reply("espeak", 0.3),
               reply("kokoro", 0.8, 0.8, 0.4), reply("kokoro-kumo", 0.9, 0.9)]
    m = metrics(replies, 0.7)
    # stops: piper#1 at 0.9 s (false), espeak at 0.4 s, kokoro at 1.4 s (late), kumo never
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["recall_within_1s"] == pytest.approx(1 / 3) and m["false_stop_rate"] == 0.5
    assert m["time_to_stop_max_s"] == pytest.approx(1.4) and m["baseline_always_stop"]["precision"] == 0.6
    switched = [reply("espeak", 0.9, 0.9, 0.9, 0.5, switch=1.0), reply("espeak", 0.5, 0.9, switch=1.0)]
    m = metrics(switched, 0.7)
    # the first is stopped 0.9 s after its switch; the second before its switch (a false stop)
    assert m["stopped_before_switch"] == 1 and m["precision"] == 0.5 and m["time_to_stop_max_s"] == pytest.approx(0.9)


@pytest.mark.slow
def test_evaluate_guardrail_on_tiny_fixtures(tmp_path, monkeypatch):
    """The reference through a checkpoint's codec (written from two questions), which OmniChat.load
    serves and the codec condition is scored against; then the whole evaluation."""
    pytest.importorskip("resemblyzer")
    pytest.importorskip("kokoro_onnx")
    pytest.importorskip("matplotlib")
    tok, codec, v, fmt, m = F.setup(tmp_path / "tok", vocoder="universal")
    bot = OmniChat(m, fmt, codec, F.image_tokenizer(), F.video_tokenizer(), F.config(m))
    F.write_checkpoint(bot, v, tok, tmp_path / "step")
    monkeypatch.setattr(vg, "load_spoken_qa", lambda: load_spoken_qa()[:2])
    path, digest = vg.write_reference(tmp_path / "step" / "tokenizers" / "codec")
    assert path == tmp_path / "step" / "tokenizers" / "codec" / "preset_voice.safetensors"
    ref = load_reference(path.parent)
    assert torch.equal(OmniChat.load(tmp_path / "step").voice_reference, ref) and not torch.equal(ref, load_reference())
    monkeypatch.undo()
    out = evaluate_guardrail(tmp_path / "report", checkpoint=tmp_path / "step", serving=ServingConfig(max_reply_frames=8),
                             voices=1, texts=1, preset_texts=2, switches=False, requests=["Say hello in my voice."],
                             reply_s=1.5)  # cut replies: checks by 1 s and after it, a fraction of the codec's work
    assert {p.name for p in (tmp_path / "report").iterdir()} == {"voice_guardrail.json", "voice_guardrail.md", "voice_guardrail.png"}
    saved = json.loads((tmp_path / "report" / "voice_guardrail.json").read_text())
    assert saved["conditions"] == ["clean", "codec:step"] and saved["frame_samples"] == codec.hop_length
    assert saved["guardrail"]["reference"] == {"clean": vg.reference_digest(load_reference()), "codec:step": vg.reference_digest(ref)}
    assert saved["reply_s"] == 1.5 and max(r["seconds"] for r in saved["scores"]) < 1.51 + saved["lead_ms"] / 1000
    clean = out["test"]["chosen_on_validation"]["test/clean"]
    assert clean["non_preset"] == 3 and clean["preset"] == 2 and 0 <= clean["recall"] <= 1
    assert 0 < out["cost"]["cpu_ms_per_frame"] and out["cost"]["checks"] > 0
    assert out["imitation"]["requests"] == 1 and len(out["imitation"]["replies"]) == 1
