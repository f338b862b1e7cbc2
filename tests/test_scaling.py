"""benchmarks/scaling.py: its formulas against numbers worked out by hand, its model-state memory against
DeepSpeed's own printed estimate, and main() printing every table of docs/scaling.md."""

import contextlib
import importlib.util
import io
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def scaling():
    spec = importlib.util.spec_from_file_location("scaling", os.path.join(REPO, "benchmarks", "scaling.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_parameter_count_matches_the_hand_count(scaling):
    H, I, V, layers = 128, 512, 30528, 2  # `tiny`, BERT's uncased vocabulary padded to a multiple of 64
    embeddings = V * H + 512 * H + 2 * H + 2 * H  # word, position, segment, LayerNorm
    layer = (H * 3 * H + 3 * H) + (H * H + H) + (H * I + I) + (I * H + H) + 2 * 2 * H
    mlm = H * H + 3 * H + V  # transform (dense + LayerNorm) and the decoder bias; the decoder is the tied table
    sbo = 15 * 200 + ((2 * H + 200) * H + 3 * H) + (H * H + 3 * H) + V
    total, largest = scaling.count_params(scaling.build_on_meta(scaling.PRESETS["tiny"]))
    assert total == embeddings + layers * layer + mlm + sbo == 4_526_520
    assert largest == V * H + V  # a head holding the tied table and its bias


def test_ring_allreduce_and_zero_volumes(scaling):
    assert scaling.ring_allreduce_bytes(1_000_000, 4) == 3_000_000  # 2 * 3/4 * 1e6 values * 2 bytes
    assert scaling.ring_allreduce_bytes(1_000_000, 2, 4) == 4_000_000
    P, N = 1_000_000, 64
    all_reduce = scaling.ring_allreduce_bytes(P, N)
    assert scaling.bytes_per_step(1, P, N) == pytest.approx(all_reduce)
    assert scaling.bytes_per_step(2, P, N) == pytest.approx(all_reduce)
    assert scaling.bytes_per_step(3, P, N) == pytest.approx(1.5 * all_reduce)
    # accumulation: ZeRO-1 still reduces once; ZeRO-2 reduce-scatters every micro step; ZeRO-3 gathers every one
    assert scaling.bytes_per_step(1, P, N, accumulation=4) == pytest.approx(all_reduce)
    assert scaling.bytes_per_step(2, P, N, accumulation=4) == pytest.approx(2.5 * all_reduce)
    assert scaling.bytes_per_step(3, P, N, accumulation=4) == pytest.approx(6 * all_reduce)
    # 1.35 GB over 100 Gb/s at 80%: 1.35e9 * 8 / 8e10 = 0.135 s
    assert scaling.allreduce_seconds(1.35e9, 64, 100) == pytest.approx(0.135)


def test_zero_memory(scaling):
    P, largest = 337_060_536, 29_782_400
    assert scaling.zero_gpu_bytes(1, P, largest, 8) == 4 * P + 2 * P
    # no partitioning: DeepSpeed's stage-2 estimate for a single GPU
    one_gpu = scaling.stage_1_and_2.estimate_zero2_model_states_mem_needs(P, 1, 1, cpu_offload=False)[1]
    assert scaling.zero_gpu_bytes(0, P, largest, 8) == 20 * P == one_gpu
    for stage in (1, 2, 3):
        per_gpu = [scaling.zero_gpu_bytes(stage, P, largest, n) for n in scaling.GPU_COUNTS]
        assert per_gpu == sorted(per_gpu, reverse=True) and per_gpu[0] > per_gpu[-1]
    # ZeRO-3 keeps only its shard and the largest layer gathered: 18 B/param / N + 4 B per largest-layer param
    assert scaling.zero_gpu_bytes(3, P, largest, 1024) == 4 * largest + int(18 * P / 1024)
    assert scaling.zero_gpu_bytes(3, P, largest, 64) < scaling.zero_gpu_bytes(2, P, largest, 64) \
        < scaling.zero_gpu_bytes(1, P, largest, 64)


def test_zero_memory_matches_deepspeeds_printout(scaling):
    P, largest = 337_060_536, 29_782_400
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        scaling.stage_1_and_2.estimate_zero2_model_states_mem_needs_all_cold(P, 8, 8)
        scaling.stage3.estimate_zero3_model_states_mem_needs_all_cold(P, largest, 8, 8)
    text = out.getvalue()
    zero2 = float(re.search(r"([\d.]+)GB \| offload_optimizer=none", text).group(1))
    zero3 = float(re.search(r"([\d.]+)GB \| offload_param=none, offload_optimizer=none", text).group(1))
    assert zero2 == round(scaling.zero_gpu_bytes(2, P, largest, 64) / 2**30, 2)
    assert zero3 == round(scaling.zero_gpu_bytes(3, P, largest, 64) / 2**30, 2)


def test_activations_and_compute(scaling):
    large = scaling.MODELS["spanbert-large"]
    s, b, h, a, L = 512, 32, 1024, 16, 24
    assert scaling.activation_bytes(large, flash=True) == 34 * s * b * h * L == 13_690_208_256
    assert scaling.activation_bytes(large, flash=False) == (34 * s * b * h + 5 * a * s * s * b) * L
    assert scaling.activation_bytes(large, checkpointing=True) == 2 * s * b * h * L + 34 * s * b * h
    # 6 * 1e9 params * 1000 tokens at 40% of 312 TFLOP/s
    assert scaling.compute_seconds(1e9, 1000, "A100") == pytest.approx(6e12 / (0.4 * 312e12))
    assert scaling.accumulation_for(0.9, compute=1.0, comm=0.05) == 1
    assert scaling.accumulation_for(0.9, compute=1.0, comm=0.5) == 5  # 5 / (5 + 0.5) = 0.909


def test_main_prints_every_table(scaling):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = scaling.main([])
    text = out.getvalue()
    assert text.count("\n### ") == len(result["tables"]) == 10
    assert result["params"]["tiny"] == 1_597_880 and 330e6 < result["params"]["spanbert-large"] < 345e6
    assert 0.9e9 < result["params"]["encoder-1b"] < 1.2e9
    assert "TODO(measured)" in text and "| 1024 | 32 | 1 | 32,768 | 18,750 | LAMB |" in text


def test_the_doc_holds_the_tables_the_script_prints(scaling):
    doc = open(os.path.join(REPO, "docs", "scaling.md")).read()
    *tables, (_, nodes) = scaling.plan()["tables"]
    for title, table in tables:
        assert f"### {title}\n\n{table}" in doc, f"docs/scaling.md lags benchmarks/scaling.py: {title}"
    for row in nodes.splitlines()[2:]:  # the measured column is filled in by hand; the predictions are not
        assert row.rsplit("|", 2)[0] in doc
