"""`train.py --preflight` on two ranks of this host: every check passes, and it leaves nothing behind (no
output folder, none of DeepSpeed's shared-memory buffers). The multi-node cases are in tests/multinode."""

import glob

import pytest

from tests.distributed.launch import launch
from tests.distributed.test_pretrain import ds_config, train_args

pytestmark = pytest.mark.slow  # launches processes


def test_preflight_passes_on_two_ranks_and_leaves_nothing_behind(python_docs_shards, tmp_path):
    shared_memory = set(glob.glob("/dev/shm/deepspeed_allreduce_buffer*"))
    out = tmp_path / "run"
    done = launch(train_args(str(python_docs_shards.path), str(out), ds_config(str(tmp_path), 2)) + ["--preflight"],
                  ranks=2, launcher="deepspeed")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    checks = [line.split(":")[0] for line in done.stdout.splitlines() if line.startswith(("ok", "FAIL"))]
    assert checks == [f"ok    {name}" for name in ("rendezvous", "settings", "data", "output", "batch", "all-reduce")]
    assert not out.exists()
    assert set(glob.glob("/dev/shm/deepspeed_allreduce_buffer*")) <= shared_memory
