"""scripts/gpu_check.sh --cpu-dry-run: every stage of the GPU check runs on CPU with tiny settings and says ok.

The whole dry run took 186 s here under pytest, 217 s by hand (631 s while another test run shared the
two cores). Where CI cannot
spare that, GPU_CHECK_STAGES names a subset, e.g. "env wheels prepare train_fp16_zero2 train_bf16_zero3"
(2 min): the kernels stage is benchmarks/kernels.py --smoke, which tests/kernels/test_benchmark.py runs too.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # minutes of subprocesses: left out by `pytest -m "not slow"`

pytest.importorskip("deepspeed")
pytest.importorskip("triton")

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"
DEFAULT_STAGES = ["env", "wheels", "kernel_tests", "kernels", "prepare", "steps", "train_fp16_zero2",
                  "train_bf16_zero3"]
TESTED = os.environ.get("GPU_CHECK_STAGES", " ".join(DEFAULT_STAGES)).split()


def test_default_stages_are_the_gpu_checks_order():
    default = re.search(r'^STAGES=\$\{STAGES:-"([^"]*)"\}', SCRIPT.read_text(), re.M)
    assert default and default.group(1).split() == DEFAULT_STAGES


def test_cpu_dry_run_stages_each_say_ok_and_each_training_run_is_exported_and_opened(tmp_path):
    trained = [name for name in ("train_fp16_zero2", "train_bf16_zero3") if name in TESTED]
    env = dict(os.environ, OUT=str(tmp_path / "out"), WORK=str(tmp_path / "work"), STAGES=" ".join(TESTED))
    # DeepSpeed's op builds lock a folder under TORCH_EXTENSIONS_DIR: one of the tree's own, not a shared one
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    env.pop("BUDGET_S", None)
    env["PYTHON"] = sys.executable  # the test's own interpreter, not whatever python3 is first on PATH
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu-dry-run"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=2000)
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert proc.returncode == 0, summary + proc.stdout[-4000:] + proc.stderr[-2000:]
    for stage in TESTED:  # one line each, in order: NAME rc=0 Ns ok
        assert re.search(rf"^{stage} +rc=0 +\d+s +ok$", summary, re.M), (stage, summary)
    order = [line.split()[0] for line in summary.splitlines() if re.match(r"^[a-z_0-9]+ +rc=", line)]
    assert order == TESTED, summary
    # what each stage is for reached the summary: both DeBERTa peers in the kernel table, the step tables,
    # each training run exported and opened by transformers
    if "kernels" in TESTED:
        assert "flashdeberta" in summary and "disentangled-flash: n/a (CUDA only" in summary, summary
    if "steps" in TESTED:
        assert "bf16, DeepSpeed engines (ZeRO 1)" in summary and "DeBERTa training step" in summary, summary
    for name in trained:
        assert f"--- {name}: last metrics" in summary, summary
    assert summary.count("no missing or unexpected weights") == len(trained), summary
    assert summary.count("finite True") == len(trained), summary
    if "train_fp16_zero2" in TESTED:
        assert "fp32 on CPU instead" in (tmp_path / "out" / "train_fp16_zero2.log").read_text()
