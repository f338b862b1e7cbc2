"""benchmarks/kernels.py --smoke: the GPU benchmark script runs end to end on CPU under the interpreter."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # launches processes: left out by `pytest -m "not slow"`

pytest.importorskip("triton")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kernels.py"


def test_benchmark_smoke_runs_every_kernel_and_peer_and_prints_one_table():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke"], capture_output=True, text=True,
                          timeout=180, env=env, cwd=SCRIPT.parents[1])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    progress = [line for line in proc.stdout.splitlines() if line.startswith("measured ")]
    assert len(progress) >= 5  # one line per measurement as it lands, then the table
    out = proc.stdout[proc.stdout.index("device: "):]
    assert not any(line.startswith("measured ") for line in out.splitlines())
    for kernel in ("bias_gelu_ln", "attention"):
        for impl in ("ours (triton)", "eager", "torch.compile"):
            assert any(kernel in line and impl in line for line in out.splitlines()), (kernel, impl, out)
    assert "sdpa" in out and "n/a (off (--smoke))" in out  # torch.compile is skipped, not crashed on
    assert "peer/ours" in out
    # DeBERTa's disentangled attention: ours, flashdeberta's and disentangled-flash's kernels (peers, where
    # installed; disentangled-flash runs on CUDA only, so n/a here) against eager, padded and varlen
    rows = {}
    for line in out.splitlines():
        if line.startswith("disentangled "):
            cells = [c.strip() for c in line.split("  ") if c.strip()]
            rows.setdefault(cells[2], []).append(line)
    assert {"ours (triton)", "eager", "torch.compile", "flashdeberta", "disentangled-flash"} <= set(rows), out
    assert all(len(lines) == 2 for lines in rows.values()), rows  # padded and varlen
    assert "disentangled-flash: n/a (CUDA only, skipped in the dry run)" in out
    for impl in ("ours (triton)", "flashdeberta"):
        for line in rows[impl]:
            if "n/a" not in line:
                assert float(line.split()[-1]) < 1e-4, line
