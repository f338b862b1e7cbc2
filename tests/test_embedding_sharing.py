"""benchmarks/embedding_sharing.py --quick runs end to end: the three sharing modes through the deepspeed
launcher, their losses, held-out scores and embedding similarities in one table, results.json and the plot."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow  # launches training processes


def test_the_quick_benchmark_compares_the_three_modes(tmp_path):
    pytest.importorskip("matplotlib")
    done = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "embedding_sharing.py"), "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| ES (one table) |" in done.stdout and "| GDES (sg(E_G) + E_delta) |" in done.stdout
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert set(results) == {"none", "share", "gdes"}
    # One table under ES: a token's two rows are the same; under NES two tables that started apart.
    assert results["share"][0]["cosine_between"] == pytest.approx(1.0)
    assert results["none"][0]["cosine_between"] < 0.5
    assert (tmp_path / "embedding_sharing.png").exists()
