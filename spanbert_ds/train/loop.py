"""Pretraining: `deepspeed train.py --deepspeed_config ds_configs/X.json --data SHARDS ...`.

run -> prepare -> train (run/start.py). prepare builds and checks the whole run on every rank before the
process group exists, so a mistake is one line before any work. train creates the engine once and runs
DeepSpeed's short loop (forward, backward, step); after each optimizer step it logs, evaluates,
checkpoints and stops when asked. Around it: resume.py (what a resume may change, new phases), and the run
layer it shares with fine-tuning (spanbert_ds/run/: the ds_config, ranks, the run folder, checkpoints and
how they load, the monitor, stop signals).

--init-from reads a Hugging Face folder, which is interop/hf.py's to know; interop sits above training, so
the command line hands it down (run's `hf`, cli.py).
"""

import math
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from spanbert_ds.data.blend import BlendedSamples, check_one_tokenizer, corpus_names, parse_data
from spanbert_ds.data.loader import BatchPlan, micro_batch_loader
from spanbert_ds.data.masking import MASKERS, MaskingConfig
from spanbert_ds.data.packing import PackedSamples
from spanbert_ds.data.shards import Shards
from spanbert_ds.errors import UserError
from spanbert_ds.model.config import ModelConfig, model_config_for
from spanbert_ds.model.objectives import OBJECTIVES
from spanbert_ds.run import checkpoint, folder, resume
from spanbert_ds.run.distributed import initialize_engine, ranks_by_host, start_process_group
from spanbert_ds.run.ds_config import load_ds_config
from spanbert_ds.run.monitor import Monitor, StepSums, optimizer_scalars
from spanbert_ds.run.signals import EXIT_DIVERGED, EXIT_PREEMPTED, leave_stop_signals_to_the_trainer
from spanbert_ds.run.start import start
from spanbert_ds.train import preflight
from spanbert_ds.train.args import add_arguments, check_run_args, overrides_of
from spanbert_ds.train.evaluate import BlendedEvaluation, HeldOutEvaluation
from spanbert_ds.train.resume import (check_continuable, check_resumable, find_continuation, phase_start,
                                      run_identity, save_step, source)

__all__ = ["add_arguments", "run", "prepare", "train", "Run"]


def run(args, hf=None):
    """hf: what reads a Hugging Face folder for --init-from (interop/hf.py, handed down by cli.py): config_from_hf,
    load_hf_into and format_report."""
    if args.preflight:
        return preflight.run(args)
    return start(lambda world_size, rank: prepare(args, world_size, rank, hf),
                 lambda prepared, rank, world_size, stop: train(args, prepared, rank, world_size, stop, hf))


@dataclass
class Run:
    """What a run is made of, built and checked by prepare() on every rank."""

    ds_config: dict
    shards: Shards  # the first corpus of a blend (they share one tokenizer)
    objective_class: type
    model_config: ModelConfig
    masking_config: MaskingConfig
    samples: PackedSamples  # or a BlendedSamples of several corpora (--data "0.7 wiki/ 0.3 books/")
    masker: object
    plan: BatchPlan
    evaluation: HeldOutEvaluation | None
    eval_every: int  # 0: no evaluation
    ckpt_root: str
    identity: dict  # what a resume must keep (resume.run_identity)
    resume_tag: str | None  # the checkpoint this run continues, if any
    resume_info: dict | None  # its marker
    load_universal: bool  # through DeepSpeed's universal format (another world size or ZeRO stage)
    continued_from: dict | None = None  # {"run", "tag", "step"} a new phase started from (--continue-from)
    last_step: int = 0  # the global step this run ends at: phase_start + --steps

    @property
    def phase_start(self):  # the global step before this run folder's first
        return phase_start(self.continued_from)


def check_init_tokenizer(folder, shards):
    """The ids of the shards must mean what the checkpoint's embedding rows learned: the same vocabulary. A
    folder without tokenizer files leaves only the vocabulary-size check of model_config_for."""
    from spanbert_ds.data.tokenizer import TOKENIZER_FILES, load_tokenizer

    if not any(os.path.isfile(os.path.join(folder, name)) for name in TOKENIZER_FILES):
        return
    theirs, ours = load_tokenizer(folder).get_vocab(), shards.tokenizer().get_vocab()
    if theirs != ours:
        differ = sorted(set(theirs.items()) ^ set(ours.items()), key=lambda item: item[1])
        raise UserError(f"--init-from {folder}: its tokenizer is not the one the shards in {shards.path} were prepared "
                        f"with ({len(theirs)} and {len(ours)} tokens; e.g. {differ[0][0]!r} differs), so the ids "
                        f"would mean other words; prepare the corpus with `--tokenizer {folder}`")


def prepare(args, world_size, rank, hf=None):
    check_run_args(args)
    if args.init_from and hf is None:
        raise TypeError("--init-from needs the Hugging Face reader (interop/hf.py) handed down: run(args, hf=...)")
    notes = []
    ds_config = load_ds_config(args.deepspeed_config, world_size, args.steps, notes, overrides_of(args))
    blend = parse_data(args.data)  # [(weight, folder)]: one folder, or a blend of several
    corpora = [Shards(folder, check_ids=True) for _, folder in blend]
    check_one_tokenizer(corpora)
    for corpus in corpora:
        if corpus.valid:
            corpus.valid.check_ids()
    shards = corpora[0]  # the tokenizer and special ids of them all
    objective_class = OBJECTIVES[args.objective]
    base = hf.config_from_hf(args.init_from) if args.init_from and args.model is None else None
    if args.init_from:
        check_init_tokenizer(args.init_from, shards)
    model_config = objective_class.configure(
        model_config_for(args.model, shards.vocab_size, shards.pad_id, f"the shards in {shards.path}", base))
    if args.max_seq_len > model_config.max_position_embeddings:
        fix = ("and a new phase (--continue-from) keeps the model's shape: lower --max-seq-len, or train the first "
               f"phase with --model ...,max_position_embeddings={args.max_seq_len}") if args.continue_from else \
            "lower --max-seq-len or pass --model ...,max_position_embeddings=N"
        raise UserError(f"--max-seq-len {args.max_seq_len} is longer than the model's "
                        f"{model_config.max_position_embeddings} positions; {fix}")
    if args.attention:
        model_config = model_config.replace(attention_backend=args.attention)
    masking_config = MaskingConfig.from_spec(args.masking, objective_class.masking_defaults)
    parts = [PackedSamples(corpus, args.packing, args.max_seq_len, args.seed) for corpus in corpora]
    samples = parts[0] if len(parts) == 1 else BlendedSamples(
        parts, [w for w, _ in blend], corpus_names([folder for _, folder in blend]), args.seed)
    masker = MASKERS[objective_class.masking](masking_config, shards.vocab_size, shards.mask_id, shards.special_ids)
    plan = BatchPlan(len(samples), global_batch=ds_config["train_batch_size"],
                     micro_batch=ds_config["train_micro_batch_size_per_gpu"], world_size=world_size, rank=rank,
                     seed=args.seed, interleaved=len(parts) > 1)
    ckpt_root = os.path.join(args.output, "checkpoints")
    identity = run_identity(args, model_config, corpora, masking_config, [w for w, _ in blend])
    tag, marker = resume.find_resume_point(args, ckpt_root)
    stage = ds_config.get("zero_optimization", {}).get("stage", 0)
    if marker:
        check_resumable(args, tag, marker, identity, objective_class.config_overrides, plan.global_batch, stage)
    origin, origin_marker = find_continuation(args, marker)
    if origin_marker:
        check_continuable(args, origin, origin_marker, identity, objective_class.config_overrides, stage)
    universal = resume.loads_universal(marker or origin_marker, world_size, stage)
    if universal:
        ds_config = resume.with_universal_load(ds_config)
    # Evaluation is on by default where the shards hold out text: at every checkpoint. Built last: the first
    # start on a shard folder counts the training split's tokens for the unigram baseline (then cached).
    held_out = any(corpus.valid for corpus in corpora)
    eval_every = args.eval_every if args.eval_every is not None else (args.save_every if held_out else 0)
    evaluation = None
    if eval_every and len(parts) == 1:
        evaluation = HeldOutEvaluation(shards, samples, masker, objective_class.parts, args.seed, args.eval_samples,
                                       plan.micro_batch, world_size, rank)
    elif eval_every:
        evaluation = BlendedEvaluation(samples, masker, objective_class.parts, args.seed, args.eval_samples,
                                       plan.micro_batch, world_size, rank)
        notes += [f"{name}: no held-out split in {folder}, so it is not evaluated"
                  for name, folder in evaluation.skipped]
    for note in notes if rank == 0 else ():
        print(f"note: {note}", file=sys.stderr)
    return Run(ds_config, shards, objective_class, model_config, masking_config, samples, masker, plan, evaluation,
               eval_every, ckpt_root, identity, tag, marker, universal, origin, phase_start(origin) + args.steps)


def train(args, run, rank, world_size, stop, hf=None):
    hosts = start_process_group(rank, world_size)

    torch.manual_seed(args.seed)  # the same initial weights on every rank and every run
    objective = run.objective_class(run.model_config)
    kept = {}  # what --init-from brought that this objective does not train, for the export (BERT's pooler)
    if args.init_from:
        report = hf.load_hf_into(objective, args.init_from)
        kept = report["kept"]
        if rank == 0:
            print(f"initialised from {args.init_from}: {hf.format_report(report)}", file=sys.stderr)
    root, tag = source(run)
    load_tag = resume.tag_to_load(root, tag, run.load_universal, rank)
    weight_decay = run.ds_config["optimizer"].get("params", {}).get("weight_decay", 0.0)
    engine = initialize_engine(objective, run.ds_config, args.deepspeed_config, rank, weight_decay)
    folder_lock = folder.lock(args.output, rank)
    if rank == 0:  # only now: a run that DeepSpeed refuses leaves no folder behind
        folder.write(args.output, run.model_config, describe(args, run, hosts),
                     [os.path.join(run.shards.path, name) for name in ("tokenizer.json", "meta.json")])  # a blend's first
        folder.save_imported(kept, args.output)
    start, tokens_seen = 0, 0
    if load_tag:
        client_state = resume.load(engine, root, load_tag, new_phase=not run.resume_tag)
        start, tokens_seen = client_state["step"], client_state.get("tokens_seen", 0)  # 0: from before it was kept

    accumulation = run.plan.accumulation
    first = (start - run.phase_start) * accumulation  # this phase's data order starts at its own 0
    loader = micro_batch_loader(run.samples, run.masker, run.plan, first,
                                (run.last_step - start) * accumulation, args.num_workers,
                                worker_init_fn=leave_stop_signals_to_the_trainer)
    monitor = Monitor(args.output, rank == 0, start, run.last_step, *objective.training_flops(args.max_seq_len),
                      ds_monitor=engine.monitor, tokens_seen=tokens_seen)
    if start and not run.resume_tag:
        monitor.message(f"a new phase from {run.continued_from['run']}'s {load_tag} at step {start}")
    elif start:
        monitor.message(f"resumed from {load_tag} at step {start}")
    sums = StepSums(engine.device, objective.logged())
    bad_steps, exit_code, step = 0, 0, start

    for micro_index, batch in enumerate(loader, start=first):
        torch.manual_seed(run.plan.dropout_seed(micro_index))
        batch = {name: tensor.to(engine.device, non_blocking=True) for name, tensor in batch.items()}
        out = engine(batch)
        engine.backward(out["loss"])
        lr = engine.get_lr()[0]  # the rate this step's update uses: step() moves the schedule on
        engine.step()
        sums.add(out, batch)
        if (micro_index + 1) % accumulation:
            continue

        # Once per optimizer step. Every decision below depends on all-reduced values only, so every
        # rank takes the same one (evaluation and saving are collective).
        step = run.phase_start + (micro_index + 1) // accumulation
        parts, counts, stop_requested = sums.reduce(stop.signal is not None, accumulation * world_size)
        parts = objective.summarize(parts)
        monitor.count(*counts)
        finite = all(map(math.isfinite, parts.values()))
        bad_steps = 0 if finite else bad_steps + 1
        last = step == run.last_step
        scalars = {}
        if run.evaluation and finite and (step % run.eval_every == 0 or last) and (last or not stop_requested):
            with monitor.paused():
                scalars = run.evaluation(engine)
        if scalars or step % args.log_every == 0 or last or not finite or stop_requested:
            monitor.log(step, {**parts, **optimizer_scalars(engine), "lr": lr, **scalars})
        if bad_steps >= args.max_bad_steps:
            monitor.message(f"stopping: the loss was not finite for {bad_steps} steps in a row (last at step {step}); "
                            "the last good checkpoint is kept as the latest. Lower the learning rate or use "
                            "bf16/fp32, then resume.")
            exit_code = EXIT_DIVERGED
            break
        saved = bad_steps == 0 and (step % args.save_every == 0 or last or stop_requested)
        if saved:
            with monitor.paused():
                save_step(engine, run, args, step, world_size, monitor.tokens_seen)
        if stop_requested and not last:  # at the last step the run is simply done
            what = (f"saved {checkpoint.tag_of(step)}" if saved else
                    "the loss is not finite, so nothing was saved and the latest checkpoint stays")
            monitor.message(f"stop requested ({stop.signal or 'by another rank'}): {what}; resume with --resume auto")
            exit_code = EXIT_PREEMPTED
            break
        if last and bad_steps:
            monitor.message("the run ended on a non-finite loss, so its last step was not saved; "
                            "the latest checkpoint is kept")
            exit_code = EXIT_DIVERGED

    monitor.close()
    if rank == 0 and exit_code == 0:
        print(f"done: {step} steps. TensorBoard: tensorboard --logdir {os.path.join(args.output, 'tensorboard')}  "
              f"checkpoints: {run.ckpt_root}  export: spanbert-ds export {args.output} OUT", file=sys.stderr)
    dist.barrier()
    if folder_lock:
        folder_lock.release()
    return exit_code


def describe(args, run, hosts):
    """run_config.json's description of the run: everything resolved. hosts: each rank's host."""
    return {
        "args": {k: v for k, v in vars(args).items() if k != "deepspeed_config"},
        "deepspeed_config_file": args.deepspeed_config,
        "ds_config": run.ds_config,
        "objective": args.objective,
        "packing": run.samples.mode,
        "data": corpora(run, args.steps),
        "masking": run.objective_class.masking,
        "masking_config": run.masking_config.to_dict(),
        "world_size": len(hosts),
        "hosts": ranks_by_host(hosts),
        "gradient_accumulation_steps": run.plan.accumulation,
        # a new phase (--continue-from): the run, checkpoint and step it started from; its steps follow that one
        "continued_from": run.continued_from,
    }


def corpora(run, steps):
    """Per corpus of --data: name, folder, weight, samples, samples an epoch and samples this run of `steps`
    steps draws (a blend's shares; one folder's epoch is its samples, drawn in a new order each epoch)."""
    if hasattr(run.samples, "describe"):
        return run.samples.describe(steps, run.plan.global_batch)
    n = len(run.samples)
    return [{"name": os.path.basename(os.path.normpath(str(run.shards.path))), "folder": str(run.shards.path),
             "weight": 1.0, "samples": n, "samples_per_epoch": n, "samples_in_run": steps * run.plan.global_batch}]
