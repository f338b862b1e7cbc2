"""scripts/gpu_check.sh --cpu-dry-run: the GPU check's stages run on CPU with tiny settings and say ok.

The whole dry run takes about ten minutes on two loaded cores, too long for CI, so this runs the stages
nothing else covers in a few minutes: env, wheels, prepare and both training runs with their exports
(STAGES). The kernels stage is benchmarks/kernels.py --smoke, which tests/kernels/test_benchmark.py runs;
kernel_tests is pytest tests/kernels/test_dispatch.py; the steps stage (benchmarks/train_step.py and
deberta_step.py in DeepSpeed engines) is left to the full dry run: `bash scripts/gpu_check.sh --cpu-dry-run`.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # minutes of subprocesses: left out by `pytest -m "not slow"`

pytest.importorskip("deepspeed")

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"
DEFAULT_STAGES = ["env", "wheels", "kernel_tests", "kernels", "prepare", "steps", "train_fp16_zero2",
                  "train_bf16_zero3"]
TESTED = ["env", "wheels", "prepare", "train_fp16_zero2", "train_bf16_zero3"]


def test_default_stages_are_the_gpu_checks_order():
    default = re.search(r'^STAGES=\$\{STAGES:-"([^"]*)"\}', SCRIPT.read_text(), re.M)
    assert default and default.group(1).split() == DEFAULT_STAGES


def test_cpu_dry_run_stages_each_say_ok_and_each_training_run_is_exported_and_opened(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), WORK=str(tmp_path / "work"), STAGES=" ".join(TESTED))
    # DeepSpeed's op builds lock a folder under TORCH_EXTENSIONS_DIR: one of the tree's own, not a shared one
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    env.pop("BUDGET_S", None)
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu-dry-run"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1500)
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert proc.returncode == 0, summary + proc.stdout[-4000:] + proc.stderr[-2000:]
    for stage in TESTED:  # one line each, in order: NAME rc=0 Ns ok
        assert re.search(rf"^{stage} +rc=0 +\d+s +ok$", summary, re.M), (stage, summary)
    order = [line.split()[0] for line in summary.splitlines() if re.match(r"^[a-z_0-9]+ +rc=", line)]
    assert order == TESTED, summary
    for name in ("train_fp16_zero2", "train_bf16_zero3"):
        assert f"--- {name}: last metrics" in summary, summary
    assert summary.count("no missing or unexpected weights") == 2, summary
    assert summary.count("finite True") == 2, summary
    assert "fp32 on CPU instead" in (tmp_path / "out" / "train_fp16_zero2.log").read_text()
