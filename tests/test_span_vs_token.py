"""benchmarks/span_vs_token.py --quick runs end to end: both pretraining runs, span filling, fine-tuning on
SQuAD and CoNLL subsets, the table, results.json and the plots (its numbers mean nothing at this size)."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow


def test_quick_mode_writes_the_table_results_and_plots(tmp_path):
    out = tmp_path / "svt"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "span_vs_token.py"), "--quick",
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = (out / "table.txt").read_text()
    for measure in ("span fill, piece accuracy %, L=10", "SQuAD v1.1 f1 %", "CoNLL-2003 f1 %", "span - token"):
        assert measure in table
    results = json.loads((out / "results.json").read_text())
    span, token = results["results"]["1"]["span"], results["results"]["1"]["token"]
    assert set(span["finetune"]) == {"squad", "ner"} and 0 <= token["finetune"]["squad"]["f1"] <= 100
    assert "sbo_piece_L1" in span["span_fill"] and "sbo_piece_L1" not in token["span_fill"]
    assert all(span["span_fill"][f"n_spans_L{L}"] > 0 for L in range(1, 11))
    # both models filled exactly the same spans
    assert all(span["span_fill"][f"n_spans_L{L}"] == token["span_fill"][f"n_spans_L{L}"] for L in range(1, 11))
    pytest.importorskip("matplotlib")
    for name in ("pretraining_loss.png", "span_fill_accuracy.png", "finetune_scores.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
