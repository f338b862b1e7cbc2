"""No file that DeepSpeed or torch unpickles with weights_only=False is opened before it passed
checkpoint.check_loadable: a pickle planted in a group-writable run folder never runs.

Each case plants a payload (a pickle whose reduce opens a marker file for writing, as os.system would
run a command) in one place a load can reach, then runs the command that would load it: the marker
never exists and the error names the file. One real checkpoint (a one-rank ZeRO-2 run) and its
universal conversion are made once and copied per case.
"""

import glob
import json
import os
import shutil

import pytest
import torch

from spanbert_ds.cli import main
from spanbert_ds.errors import UserError
from spanbert_ds.run import checkpoint
from tests.distributed.launch import launch
from tests.distributed.test_pretrain import ds_config, train_args

STEPS = 2  # one checkpoint, step2


class Payload:
    """Unpickled, it creates `path` (any callable would do: os.system is the usual one)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def plant(path, marker):
    """Replace checkpoint file `path` with a torch file whose pickle runs code, and its size in the folder's
    complete.json as well (whoever can write the one can write the other)."""
    torch.save({"module": {}, "optimizer": Payload(str(marker))}, path)
    listing = os.path.join(os.path.dirname(path), checkpoint.MARKER)
    if os.path.isfile(listing):
        with open(listing) as f:
            info = json.load(f)
        info["files"][os.path.basename(path)] = os.path.getsize(path)
        with open(listing, "w") as f:
            json.dump(info, f)


def assert_refused(text, path, marker):
    assert not os.path.exists(marker), "the planted pickle ran"
    assert f"checkpoint file {path} holds code, not only tensors" in text, text[-3000:]
    assert "refusing to load it" in text


# ---- check_loadable itself: fast, no processes -------------------------------------------------------------


def test_every_pt_file_in_subfolders_and_through_links_is_vetted(tmp_path):
    tag = tmp_path / "step2_universal"
    (tag / "zero" / "encoder.weight").mkdir(parents=True)
    torch.save({"module": {"w": torch.ones(2)}}, tag / "mp_rank_00_model_states.pt")
    torch.save({"param": torch.ones(2)}, tag / "zero" / "encoder.weight" / "fp32.pt")
    checkpoint.check_loadable(str(tag))  # tensors only: accepted

    marker = tmp_path / "PWNED"
    nested = tag / "zero" / "encoder.weight" / "exp_avg.pt"
    plant(nested, marker)
    with pytest.raises(UserError, match=f"checkpoint file {nested} holds code, not only tensors \\(Unsupported "
                                        "global: GLOBAL io.open\\); refusing to load it.*delete .*step2_universal: "
                                        "a resume converts .*step2 again"):
        checkpoint.check_loadable(str(tag))
    assert not marker.exists()

    nested.unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    plant(elsewhere / "step.pt", marker)
    (tag / "zero" / "linked").symlink_to(elsewhere, target_is_directory=True)
    (tag / "zero" / "loop").symlink_to(tag, target_is_directory=True)  # a cycle is walked once
    with pytest.raises(UserError, match="zero/linked/step.pt holds code"):
        checkpoint.check_loadable(str(tag))
    assert not marker.exists()


def test_a_plain_pickle_not_a_torch_file_is_refused_too(tmp_path):
    import pickle

    tag = tmp_path / "step2"
    tag.mkdir()
    marker = tmp_path / "PWNED"
    with open(tag / "mp_rank_00_model_states.pt", "wb") as f:
        pickle.dump(Payload(str(marker)), f, protocol=2)
    with pytest.raises(UserError, match="mp_rank_00_model_states.pt holds code, not only tensors \\(Unsupported "
                                        "global: GLOBAL io.open\\).*delete .*step2 to resume from"):
        checkpoint.check_loadable(str(tag))
    assert not marker.exists()


# ---- the commands, on a real checkpoint ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory, python_docs_shards):
    """(tmp, shards, run folder): a one-rank ZeRO-2 run with checkpoint step2 and its universal conversion."""
    tmp = tmp_path_factory.mktemp("vetting")
    shards, run = str(python_docs_shards.path), str(tmp / "run")
    done = launch(train_args(shards, run, ds_config(tmp, 2, micro=8), steps=STEPS))
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint.to_universal(os.path.join(run, "checkpoints"), "step2")
    return tmp, shards, run


def copy_run(saved, name, universal=True):
    tmp, _, run = saved
    copy = str(tmp / name)
    shutil.copytree(run, copy, symlinks=True)
    if not universal:
        shutil.rmtree(os.path.join(copy, "checkpoints", "step2_universal"))
    return copy


def resume(saved, run, stage):
    """Continue `run` for two more steps under ZeRO `stage` (another stage: through the universal format)."""
    tmp, shards, _ = saved
    return launch(train_args(shards, run, ds_config(tmp, stage, micro=8), steps=STEPS + 2))


@pytest.mark.slow
def test_a_universal_copy_as_deepspeed_wrote_it_passes_the_vetting(saved):
    """No false alarm: DeepSpeed's own files (loss scaler, ZeRO stage enum, fragment addresses) are allowed."""
    run = copy_run(saved, "genuine")
    done = resume(saved, run, stage=1)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from step2_universal at step 2" in done.stderr + done.stdout


@pytest.mark.slow
def test_resume_refuses_an_optimizer_shard_that_holds_code(saved):
    """(The model states file is the planted universal copy's case below, and export's.)"""
    run = copy_run(saved, "resume", universal=False)
    path = os.path.join(run, "checkpoints", "step2", "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    marker = os.path.join(run, "PWNED")
    plant(path, marker)
    done = resume(saved, run, stage=2)
    assert done.returncode == 2, done.stderr[-3000:]
    assert_refused(done.stderr, path, marker)


@pytest.mark.slow
def test_a_planted_universal_copy_is_vetted_although_its_marker_says_it_is_complete(saved):
    """The issue's case: step2 copied to step2_universal (complete.json and all) with its model states replaced,
    then a resume under another ZeRO stage, which finds the copy already converted."""
    run = copy_run(saved, "planted-universal", universal=False)
    ckpt = os.path.join(run, "checkpoints")
    shutil.copytree(os.path.join(ckpt, "step2"), os.path.join(ckpt, "step2_universal"))
    path = os.path.join(ckpt, "step2_universal", "mp_rank_00_model_states.pt")
    marker = os.path.join(run, "PWNED")
    plant(path, marker)
    done = resume(saved, run, stage=1)
    assert done.returncode == 2, done.stderr[-3000:]
    assert_refused(done.stderr, path, marker)
    assert "a resume converts" in done.stderr


@pytest.mark.slow
def test_resume_vets_the_optimizer_state_of_a_universal_copy(saved):
    """DeepSpeed's universal load opens zero/<param>/*.pt for every parameter."""
    run = copy_run(saved, "universal-zero")
    states = sorted(glob.glob(os.path.join(run, "checkpoints", "step2_universal", "zero", "*", "exp_avg.pt")))
    assert states, "the conversion wrote no zero/<param>/exp_avg.pt"
    path, marker = states[0], os.path.join(run, "PWNED")
    plant(path, marker)
    done = resume(saved, run, stage=1)
    assert done.returncode == 2, done.stderr[-3000:]
    assert_refused(done.stderr, path, marker)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"])
def test_export_refuses_a_checkpoint_file_that_holds_code(saved, name, tmp_path, capsys):
    run = copy_run(saved, f"export-{name[:4]}")
    path = os.path.join(run, "checkpoints", "step2", name)
    marker = os.path.join(run, "PWNED")
    plant(path, marker)
    assert main(["export", run, str(tmp_path / "hf")]) == 2
    assert_refused(capsys.readouterr().err, path, marker)
    assert not os.path.exists(tmp_path / "hf")


@pytest.mark.slow
def test_export_refuses_a_universal_copy(saved, tmp_path, capsys):
    run = copy_run(saved, "export-universal")
    assert main(["export", os.path.join(run, "checkpoints", "step2_universal"), str(tmp_path / "hf")]) == 2
    assert "step2_universal is a converted copy, made to resume on another number of ranks or ZeRO stage; pass the " \
           "checkpoint it was made from, step2" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("where", ["run", "checkpoint"])
def test_finetune_init_from_a_run_refuses_a_checkpoint_file_that_holds_code(saved, where):
    from spanbert_ds.finetune.init import load_init

    run = copy_run(saved, f"init-{where}")
    path = os.path.join(run, "checkpoints", "step2", "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    marker = os.path.join(run, "PWNED")
    plant(path, marker)
    with pytest.raises(UserError) as refused:
        load_init(run if where == "run" else os.path.join(run, "checkpoints", "step2"))
    assert_refused(str(refused.value), path, marker)
