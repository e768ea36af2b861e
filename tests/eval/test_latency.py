"""eval/latency.py runs end to end on CPU (tiny sizes; no timing assertions) for an omni config and
for an lm config, beside both baselines (HF generate, Moshi's LMGen), and writes its JSON."""
import json

import pytest

from tests import omni_fixtures as F
from omni.eval.latency import main

one_thread = pytest.fixture(autouse=True, scope="module")(F.one_thread)


@pytest.mark.parametrize("config", ["configs/omni-tiny.yaml", "configs/tiny.yaml"])
def test_latency_bench_runs(config, tmp_path, capsys):
    out = tmp_path / "latency.json"
    r = main(["--config", config, "--turns", "2", "--warmup", "1", "--turn-frames", "3", "--reply-frames", "3",
              "--baseline-turns", "1", "--out", str(out), f"data.path={tmp_path / 'no-corpus'}",
              f"omni.codec={tmp_path / 'no-codec'}"])
    saved = json.loads(out.read_text())
    assert saved["omni"]["ttfa"]["n"] == 2 and saved["omni"]["rtf"] > 0 and saved["baseline"]["step_ms"] >= 0
    assert r["ratios"]["ttfa_p50"] > 0
    assert saved["moshi"]["ttfa"]["n"] == 2 and saved["moshi"]["step_ms"] > 0 and r["ratios"]["moshi_ttfa_p50"] > 0
    table = capsys.readouterr().out
    assert "time to first audio p50" in table and "HF eager generate" in table and "Moshi LMGen" in table
