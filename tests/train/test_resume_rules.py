"""What a run folder may be resumed with: checked in prepare(), before any rank starts work or the run
folder is rewritten. The checkpoints here are only their complete.json markers, which is all that the
checks read."""

import argparse
import json
import os

import pytest

from spanbert_ds.errors import UserError
from spanbert_ds.interop import hf  # what cli.py hands down for --init-from
from spanbert_ds.run import checkpoint
from spanbert_ds.train import loop

DS_CONFIG = {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 8,
             "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}, "zero_optimization": {"stage": 2}}


@pytest.fixture
def run_args(tmp_path, python_docs_shards):
    (tmp_path / "ds.json").write_text(json.dumps(DS_CONFIG))
    parser = argparse.ArgumentParser()
    loop.add_arguments(parser)  # with DeepSpeed's own --deepspeed_config

    def make(*extra):
        return parser.parse_args(["--deepspeed_config", str(tmp_path / "ds.json"), "--data", str(python_docs_shards.path),
                                  "--output", str(tmp_path / "run"), "--model", "tiny", "--max-seq-len", "64",
                                  "--steps", "20", *extra])
    return make


def mark(args, step, **changes):
    """A complete checkpoint at `step` as this run would have saved it."""
    setup = loop.prepare(args, 1, 0) if not changes.get("no_identity") else None
    info = {"step": step, "world_size": 1, "zero_stage": 2, "train_batch_size": 8}
    if setup is not None:
        info["identity"] = setup.identity
    info.update({k: v for k, v in changes.items() if k != "no_identity"})
    folder = f"{args.output}/checkpoints/{checkpoint.tag_of(step)}"
    os.makedirs(folder, exist_ok=True)
    with open(f"{folder}/{checkpoint.MARKER}", "w") as f:
        json.dump(info, f)


def test_auto_resumes_the_latest_and_none_refuses_a_folder_with_checkpoints(run_args):
    args = run_args()
    mark(args, 4)
    mark(args, 8)
    assert loop.prepare(args, 1, 0).resume_tag == "step8"
    with pytest.raises(UserError, match="--resume none, but .* holds checkpoints of an earlier run \\(the latest step8\\)"):
        loop.prepare(run_args("--resume", "none"), 1, 0)


def test_going_back_past_later_checkpoints_is_refused(run_args):
    args = run_args()
    for step in (4, 8, 12):
        mark(args, step)
    with pytest.raises(UserError, match="also holds the later checkpoints step8, step12"):
        loop.prepare(run_args("--resume", f"{args.output}/checkpoints/step4"), 1, 0)
    assert loop.prepare(run_args("--resume", f"{args.output}/checkpoints/step12"), 1, 0).resume_tag == "step12"


@pytest.mark.parametrize("change, message", [
    (["--seed", "7"], "seed 42 -> 7"),
    (["--max-seq-len", "128"], "max_seq_len 64 -> 128"),
    (["--model", "tiny,hidden_size=64,num_heads=2"], "model.hidden_size"),
    (["--objective", "roberta"], "objective 'spanbert' -> 'roberta'"),
    (["--masking", "mask_ratio=0.2"], "masking.mask_ratio 0.15 -> 0.2"),
])
def test_resuming_with_other_run_settings_is_refused(run_args, change, message):
    mark(run_args(), 4)
    with pytest.raises(UserError, match=message.replace("(", "\\(")):
        loop.prepare(run_args(*change), 1, 0)


def test_training_settings_may_change_on_resume(run_args):
    mark(run_args(), 4)
    setup = loop.prepare(run_args("--model", "tiny,hidden_dropout=0.0", "--attention", "eager", "--steps", "40"), 1, 0)
    assert setup.resume_tag == "step4"


def test_a_checkpoint_from_before_identities_is_still_resumed(run_args):
    mark(run_args(), 4, no_identity=True)
    assert loop.prepare(run_args("--seed", "7"), 1, 0).resume_tag == "step4"


@pytest.mark.parametrize("saved", [0, 3])
def test_moving_to_or_from_zero_stages_0_and_3_is_refused(run_args, saved):
    mark(run_args(), 4, zero_stage=saved)
    with pytest.raises(UserError, match=f"saved under ZeRO stage {saved} and the config asks for stage 2: "
                                        "a checkpoint moves between stages 1 and 2 only"):
        loop.prepare(run_args(), 1, 0)


def test_plausible_path_mistakes_are_one_line_errors_before_any_work(run_args, tmp_path, python_docs_shards):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Some text.\n")
    os.symlink(tmp_path / "gone", tmp_path / "dangling")
    run = tmp_path / "oldrun"
    run.mkdir()
    (run / "run_config.json").write_text("{}")
    cases = [
        (["--data", str(corpus)], "is a file; --data takes a shard folder"),
        (["--data", str(run)], "is a training run's folder, not a shard folder"),
        (["--output", str(python_docs_shards.path)], "overlap; give the run its own folder"),
        (["--output", str(corpus)], "--output .*corpus.txt is a file \\(or a broken link\\); it must be a folder"),
        (["--output", str(corpus / "run")], "corpus.txt is a file \\(or a broken link\\), so no folder can be made"),
        (["--output", str(tmp_path / "dangling" / "run")], "dangling is a file \\(or a broken link\\)"),
        (["--max-seq-len", "1024"], "longer than the model's 512 positions"),
        (["--resume", str(tmp_path / "nowhere")], "no such checkpoint folder; use auto, none, or a folder like"),
    ]
    for flags, message in cases:
        with pytest.raises(UserError, match=message):
            loop.prepare(run_args(*flags), 1, 0)


def test_a_resume_on_another_world_size_keeps_the_users_checkpoint_block(run_args, tmp_path):
    (tmp_path / "ds.json").write_text(json.dumps({**DS_CONFIG, "checkpoint": {"tag_validation": "Fail", "parallel_write": {}}}))
    args = run_args()
    mark(args, 4, world_size=2)
    setup = loop.prepare(args, 1, 0)
    assert setup.load_universal
    assert setup.ds_config["checkpoint"] == {"tag_validation": "Fail", "parallel_write": {}, "load_universal": True}
    same_world = run_args("--output", str(tmp_path / "run1"))
    mark(same_world, 4)
    assert "load_universal" not in loop.prepare(same_world, 1, 0).ds_config["checkpoint"]  # a plain load


def test_roberta_records_the_model_it_trains_which_has_no_segment_embeddings(run_args):
    setup = loop.prepare(run_args("--objective", "roberta"), 1, 0)
    assert setup.model_config.type_vocab_size == 0
    assert setup.identity["model"]["type_vocab_size"] == 0
    assert setup.objective_class(setup.model_config).config == setup.model_config


def test_a_roberta_checkpoint_whose_marker_recorded_segments_is_still_resumed(run_args):
    args = run_args("--objective", "roberta")
    identity = loop.prepare(args, 1, 0).identity
    mark(args, 4, identity={**identity, "model": {**identity["model"], "type_vocab_size": 2}})  # as written before
    assert loop.prepare(args, 1, 0).resume_tag == "step4"


def test_init_from_a_folder_that_is_not_a_model_is_refused_before_anything_is_written(run_args, tmp_path):
    with pytest.raises(UserError, match="--init-from .*missing: not a Hugging Face model folder"):
        loop.prepare(run_args("--init-from", str(tmp_path / "missing")), 1, 0, hf=hf)
    assert not os.path.exists(tmp_path / "run")


def test_packing_is_part_of_what_a_resume_keeps(run_args):
    mark(run_args(), 2)
    with pytest.raises(UserError, match="packing 'doc' -> 'full'"):
        loop.prepare(run_args("--packing", "full"), 1, 0)
    with pytest.raises(UserError, match="--packing pair does not suit --objective spanbert"):
        loop.prepare(run_args("--packing", "pair"), 1, 0)


def test_a_resume_at_another_sequence_length_or_batch_is_refused_naming_continue_from(run_args):
    mark(run_args(), 4)
    with pytest.raises(UserError, match="max_seq_len 64 -> 128.*--continue-from"):
        loop.prepare(run_args("--max-seq-len", "128"), 1, 0)
    with pytest.raises(UserError, match="train_batch_size 8, the run asks for 16.*--continue-from"):
        loop.prepare(run_args("--global-batch-size", "16"), 1, 0)


def test_a_new_phase_starts_from_the_latest_checkpoint_at_another_length_batch_and_seed(run_args, tmp_path):
    for step in (4, 8):
        mark(run_args(), step)
    phase2 = str(tmp_path / "phase2")
    setup = loop.prepare(run_args("--output", phase2, "--continue-from", str(tmp_path / "run"), "--max-seq-len", "128",
                                  "--global-batch-size", "16", "--seed", "7", "--steps", "5"), 1, 0)
    assert setup.resume_tag is None and not setup.load_universal
    assert setup.continued_from == {"run": str(tmp_path / "run"), "tag": "step8", "step": 8}
    assert (setup.phase_start, setup.last_step, setup.plan.global_batch) == (8, 13, 16)
    assert setup.ds_config["train_batch_size"] == 16
    # a checkpoint folder names the step to start from
    named = loop.prepare(run_args("--output", phase2, "--continue-from", str(tmp_path / "run/checkpoints/step4"),
                                  "--max-seq-len", "128"), 1, 0)
    assert named.continued_from["tag"] == "step4" and named.last_step == 4 + 20


def test_a_new_phase_on_another_world_size_loads_through_the_universal_format(run_args, tmp_path):
    mark(run_args(), 4, world_size=2)
    setup = loop.prepare(run_args("--output", str(tmp_path / "phase2"), "--continue-from", str(tmp_path / "run")), 1, 0)
    assert setup.load_universal and setup.ds_config["checkpoint"]["load_universal"]


def test_a_phase_resumes_its_own_checkpoints_and_keeps_its_origin(run_args, tmp_path):
    mark(run_args(), 8)
    phase2 = ["--output", str(tmp_path / "phase2"), "--max-seq-len", "128", "--steps", "5"]
    first = loop.prepare(run_args(*phase2, "--continue-from", str(tmp_path / "run")), 1, 0)
    args = run_args(*phase2, "--continue-from", str(tmp_path / "run"))
    mark(args, 10, continued_from=first.continued_from)  # what phase 2 saves at its second step
    for again in (args, run_args(*phase2)):  # with or without --continue-from
        setup = loop.prepare(again, 1, 0)
        assert (setup.resume_tag, setup.continued_from, setup.last_step) == ("step10", first.continued_from, 13)
    mark(args, 13, continued_from=first.continued_from)
    with pytest.raises(UserError, match="already reached step 13 of step 13 \\(this phase starts at step 8, --steps 5\\)"):
        loop.prepare(args, 1, 0)


def test_new_phase_mistakes_are_one_line_errors_before_any_work(run_args, tmp_path):
    phase1 = str(tmp_path / "run")
    mark(run_args(), 4)
    empty = tmp_path / "empty"
    empty.mkdir()
    mark(run_args("--output", str(tmp_path / "plain")), 2)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    phase2 = str(tmp_path / "phase2")
    cases = [
        (["--continue-from", str(tmp_path / "nowhere")], "no such run folder; pass the --output folder of the phase"),
        (["--continue-from", str(empty)], "holds no complete checkpoint"),
        (["--continue-from", phase1 + "/checkpoints/step9"], "not a complete checkpoint"),
        (["--continue-from", phase1, "--output", phase1], "is this run's own --output; give the new phase its own"),
        (["--continue-from", phase1, "--output", str(tmp_path / "plain")],
         "already holds checkpoints of a run of its own .*the latest step2; resume it without --continue-from"),
        (["--continue-from", phase1, "--model", "tiny,hidden_size=64,num_heads=2"],
         "trained another model \\(model.hidden_size .*a new phase keeps the objective, the model's shape"),
        (["--continue-from", phase1, "--objective", "roberta"], "objective 'spanbert' -> 'roberta'"),
        (["--continue-from", phase1, "--max-seq-len", "1024"],
         "longer than the model's 512 positions; and a new phase \\(--continue-from\\) keeps the model's shape"),
        (["--continue-from", phase1, "--init-from", str(tmp_path / "hf")], "pass one of them"),
    ]
    for flags, message in cases:
        with pytest.raises(UserError, match=message):
            loop.prepare(run_args("--output", phase2, *flags), 1, 0, hf=hf)
    assert not os.path.exists(phase2)


def test_a_new_phase_keeps_the_zero_stage_rules_of_a_resume(run_args, tmp_path):
    mark(run_args(), 4, zero_stage=0)
    with pytest.raises(UserError, match="saved under ZeRO stage 0 and the config asks for stage 2: .* for the new phase"):
        loop.prepare(run_args("--output", str(tmp_path / "phase2"), "--continue-from", str(tmp_path / "run")), 1, 0)
