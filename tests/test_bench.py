"""`spanbert-ds bench` (spanbert_ds/bench.py) through the CLI on CPU, tiny model: the table, the n/a rows."""

import numpy as np
import pytest

from spanbert_ds.bench import MASK, spanbert_batch
from spanbert_ds.cli import main

TINY = ["bench", "--model", "tiny", "--max-seq-len", "64", "--micro-batch-size", "2", "--steps", "2", "--warmup", "1",
        "--device", "cpu"]


def table_rows(text):
    """backend name -> its row, for the lines below the table's rule."""
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if set(line) == {"-"})
    rows = {}
    for line in lines[rule + 1:]:
        if line.startswith("("):
            break
        rows[line.split()[0]] = line
    return rows


@pytest.fixture(autouse=True)
def no_interpreter(monkeypatch):
    # Under Triton's interpreter the fused backend would run on CPU; these tests pin the plain CPU case.
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def test_bench_prints_one_row_per_backend_with_throughput_and_ratio(capsys):
    assert main(TINY + ["--backends", "eager,sdpa"]) == 0
    out = capsys.readouterr().out
    assert "batch 2 x seq 64" in out and "fp32" in out
    rows = table_rows(out)
    assert list(rows) == ["eager", "sdpa"]
    for name, row in rows.items():
        fields = row.split()
        assert fields[1] == name  # what it runs
        assert float(fields[2]) > 0 and float(fields[3].replace(",", "")) > 0  # ms/step, tokens/s
        assert fields[4] == "n/a"  # no MFU on CPU: no known peak
        assert fields[5].endswith("x")
        assert np.isfinite(float(fields[-1]))  # the first step's loss
    assert rows["eager"].split()[5] == "1.00x"


def test_fused_on_cpu_is_an_na_row_with_its_reason_not_a_crash(capsys):
    assert main(TINY + ["--backends", "fused"]) == 1  # nothing could be timed
    row = table_rows(capsys.readouterr().out)["fused"]
    assert "n/a (" in row and "CUDA" in row


def test_auto_on_cpu_resolves_to_sdpa(capsys):
    assert main(TINY + ["--backends", "auto", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert table_rows(out)["auto"].split()[1] == "sdpa"
    assert "auto resolved to: sdpa" in out


@pytest.mark.parametrize("flag, value", [("--backends", "eager,flash"), ("--max-seq-len", "4096"), ("--micro-batch-size", "0"), ("--warmup", "0")])
def test_bad_arguments_are_one_line_errors(capsys, flag, value):
    assert main(TINY + [flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spanbert-ds bench: error:") and flag in err


def test_batch_is_span_masked_in_the_contract_format():
    batch = spanbert_batch(vocab_size=1000, batch_size=3, seq_len=128, seed=1)
    B, T = batch["input_ids"].shape
    assert (B, T) == (3, 128) and bool(batch["attention_mask"].all())
    positions = batch["mlm_positions"].numpy()
    assert np.all(np.diff(positions) > 0) and 0.10 < positions.size / (B * (T - 2)) < 0.20  # ~15% masked
    assert (batch["input_ids"].reshape(-1)[positions] == MASK).float().mean() > 0.5  # 80% become [MASK]
    assert batch["sbo_positions"].numel() > 0 and int(batch["sbo_rel_pos"].min()) >= 1


def test_the_older_spellings_seq_len_and_batch_still_parse(capsys):
    old = ["bench", "--model", "tiny", "--seq-len", "64", "--batch", "2", "--steps", "1", "--warmup", "1",
           "--device", "cpu", "--backends", "eager"]
    assert main(old) == 0
    assert "batch 2 x seq 64" in capsys.readouterr().out
