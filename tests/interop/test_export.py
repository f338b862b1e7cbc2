"""`spanbert-ds export` of ZeRO-0 checkpoints: the fp32 masters in every layout DeepSpeed 0.19 writes."""

import json
import os

import pytest
import torch

from spanbert_ds.cli import main
from spanbert_ds.errors import UserError
from spanbert_ds.run.folder import load_run
from spanbert_ds.run import checkpoint
from tests.interop.test_hf import trained, wordpiece


@pytest.fixture(scope="module")
def tokenizer():
    return wordpiece(lowercase=False)


@pytest.fixture
def objective(tokenizer):
    return trained("spanbert", tokenizer.get_vocab_size())[0]


def zero0_run(tmp_path, objective, optimizer_state, tokenizer, dtype=torch.bfloat16):
    """A run folder whose one checkpoint is a ZeRO-0 save of `objective` in `dtype` with `optimizer_state`
    (None: the checkpoint holds the weights only)."""
    run = tmp_path / "run"
    tag_dir = run / "checkpoints" / "step1"
    tag_dir.mkdir(parents=True)
    (run / "tokenizer").mkdir()
    tokenizer.save(str(run / "tokenizer" / "tokenizer.json"))
    (run / "run_config.json").write_text(json.dumps({"objective": objective.name}))
    objective.config.to_json(run / "model_config.json")
    saved = {"module": {name: tensor.to(dtype) for name, tensor in objective.state_dict().items()}}
    if optimizer_state is not None:
        saved["optimizer"] = optimizer_state
    torch.save(saved, tag_dir / "mp_rank_00_model_states.pt")
    (tag_dir / checkpoint.MARKER).write_text(json.dumps({"step": 1, "zero_stage": 0, "world_size": 1}))
    return str(run)


def fused_fp16_optimizer_state(objective):
    """What DeepSpeed's fused 16-bit optimizer (FP16_Optimizer, used with FusedAdam: the ZeRO-0 default on
    GPUs) saves: its own state_dict, with fp32_groups_flat holding the trained fp32 weights."""
    from deepspeed.runtime.fp16.fused_optimizer import FP16_Optimizer

    low = copy_of(objective).bfloat16()
    groups = low.parameter_groups(0.0)
    wrapped = FP16_Optimizer(torch.optim.AdamW(groups, lr=1e-3), deepspeed=None, low_precision_dtype=torch.bfloat16,
                             dynamic_loss_scale=False, static_loss_scale=1.0)
    masters = objective.parameter_groups(0.0)
    for flat, group in zip(wrapped.fp32_groups_flat, masters):  # the masters an optimizer step leaves behind
        flat.data.copy_(torch.cat([p.detach().reshape(-1) for p in group["params"]]))
    return wrapped.state_dict()


def copy_of(objective):
    copy = type(objective)(objective.config)
    copy.load_state_dict(objective.state_dict())
    return copy


@pytest.mark.slow
def test_a_fused_fp16_optimizers_flat_masters_are_exported_not_the_rounded_weights(tmp_path, objective, tokenizer):
    run = zero0_run(tmp_path, objective, fused_fp16_optimizer_state(objective), tokenizer)
    exported, _ = load_run(run)
    for name, tensor in objective.state_dict().items():
        assert torch.equal(exported.state_dict()[name], tensor), name
    assert main(["export", run, str(tmp_path / "hf")]) == 0


@pytest.mark.slow
def test_16_bit_weights_without_masters_are_refused_not_exported_rounded(tmp_path, capsys, objective, tokenizer):
    run = zero0_run(tmp_path, objective, {"optimizer_state_dict": {}}, tokenizer)
    with pytest.raises(UserError, match="16 bits .* and no fp32 master copy"):
        load_run(run)
    assert main(["export", run, str(tmp_path / "hf")]) == 2
    assert "would lose precision silently" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "hf")


@pytest.mark.slow
def test_fused_masters_of_another_model_are_a_one_line_error(tmp_path, objective, tokenizer):
    state = fused_fp16_optimizer_state(objective)
    state["fp32_groups_flat"][0] = state["fp32_groups_flat"][0][:-5]
    with pytest.raises(UserError, match="the optimizer's fp32 masters hold .* values per parameter group"):
        load_run(zero0_run(tmp_path, objective, state, tokenizer))


@pytest.mark.slow
def test_export_makes_the_output_parents_and_refuses_a_file_parent_in_one_line(tmp_path, capsys, objective, tokenizer):
    run = zero0_run(tmp_path, objective, fused_fp16_optimizer_state(objective), tokenizer)
    assert main(["export", run, str(tmp_path / "new" / "deeper" / "hf")]) == 0
    assert os.path.isfile(tmp_path / "new" / "deeper" / "hf" / "model.safetensors")
    (tmp_path / "plain").write_text("a file")
    assert main(["export", run, str(tmp_path / "plain" / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "plain is a file (or a broken link), so no folder can be made below it" in err


@pytest.mark.slow
def test_overwrite_into_a_symlink_is_refused_before_loading_the_run(tmp_path, capsys, monkeypatch, objective,
                                                                      tokenizer):
    import spanbert_ds.interop.export as export_module

    def no_work(*args):
        raise AssertionError("export loaded the run before refusing the link")

    run = zero0_run(tmp_path, objective, fused_fp16_optimizer_state(objective), tokenizer)
    monkeypatch.setattr(export_module, "load_run", no_work)
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "keep").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for overwrite in (["--overwrite"], []):
        assert main(["export", run, str(tmp_path / "link"), *overwrite]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{tmp_path / 'link'}" in err and str(tmp_path / "real") in err, err
        assert ("is a symbolic link to" in err) == bool(overwrite)
    assert os.path.islink(tmp_path / "link") and os.listdir(tmp_path / "real") == ["keep"]
    assert sorted(os.listdir(tmp_path)) == ["link", "real", "run"]


@pytest.mark.slow
def test_exported_safetensors_have_the_mode_of_the_other_files(tmp_path, objective, tokenizer):
    run = zero0_run(tmp_path, objective, fused_fp16_optimizer_state(objective), tokenizer)
    before = os.umask(0o022)
    try:
        assert main(["export", run, str(tmp_path / "hf")]) == 0
    finally:
        os.umask(before)
    modes = {name: oct(os.stat(tmp_path / "hf" / name).st_mode & 0o777) for name in os.listdir(tmp_path / "hf")}
    assert "model.safetensors" in modes and "sbo_head.safetensors" in modes
    assert set(modes.values()) == {"0o644"}, modes


@pytest.mark.slow
def test_a_stop_signal_during_export_leaves_no_temporary_folder(tmp_path, capsys, monkeypatch, objective, tokenizer):
    import signal
    import time

    import spanbert_ds.interop.hf as hf

    def stopped_half_way(objective, config, tokenizer_source, out_dir, **options):
        os.makedirs(out_dir)
        with open(os.path.join(out_dir, "model.safetensors"), "wb") as f:
            f.write(b"half")
        # Today's code has no handler: the signal would kill pytest itself, so stop here instead.
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None), "SIGTERM would kill export outright"
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises here
        raise AssertionError("SIGTERM did not stop export")

    run = zero0_run(tmp_path, objective, fused_fp16_optimizer_state(objective), tokenizer)
    monkeypatch.setattr(hf, "export_hf", stopped_half_way)
    assert main(["export", run, str(tmp_path / "new" / "hf")]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err == "spanbert-ds export: interrupted by SIGTERM\n"
    assert sorted(os.listdir(tmp_path)) == ["run"]  # no OUT.tmp-PID, no parent made for OUT
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # main() puts the handler it found back
