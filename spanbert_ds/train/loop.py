"""Pretraining: `deepspeed train.py --deepspeed_config ds_configs/X.json --data SHARDS ...`.

The loop itself is the short one of DeepSpeed's examples (forward, backward,
step); everything else is set up around it: validation before any rank starts
work, the data plan of this rank, resume, logging, checkpoints and signals.
"""

import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time

import torch
import torch.distributed as dist

from spanbert_ds.errors import UserError
from spanbert_ds.train import checkpoint
from spanbert_ds.train.args import add_arguments as _add_arguments
from spanbert_ds.train.args import check_run_args, load_ds_config
from spanbert_ds.train.distributed import fill_rank_environment, unlink_shared_memory_names
from spanbert_ds.train.monitor import Monitor
from spanbert_ds.train.signals import EXIT_DIVERGED, EXIT_PREEMPTED, StopRequest

PARTS = ("loss", "mlm_loss", "sbo_loss", "nsp_loss")


def add_arguments(parser):
    _add_arguments(parser)


def run(args):
    # From the very start: a scheduler's stop signal during set-up (which can take minutes when a
    # checkpoint is converted or loaded) is honoured at the first step boundary instead of killing the run.
    stop = StopRequest()
    rank, world_size, local_rank = fill_rank_environment()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)  # before the first collective, so NCCL puts each rank on its own GPU
    try:
        setup = prepare(args, world_size, rank)
    except UserError:
        if rank != 0:  # rank 0 reports it; the others leave quietly with the same code, a moment
            time.sleep(1.0)  # later, so that a launcher that stops all ranks on the first exit lets rank 0 speak
            raise SystemExit(UserError.exit_code)
        raise
    return train(args, setup, rank, world_size, stop)


class Setup:
    """What a run is made of, built and checked on every rank before the process group exists."""


def prepare(args, world_size, rank):
    from spanbert_ds.data.loader import BatchPlan
    from spanbert_ds.data.masking import MASKERS, MaskingConfig
    from spanbert_ds.data.packing import PackedSamples
    from spanbert_ds.data.shards import Shards
    from spanbert_ds.model.objectives import OBJECTIVES
    from spanbert_ds.train.evaluate import HeldOutEvaluation

    check_run_args(args)
    s = Setup()
    notes = []
    s.ds_config = load_ds_config(args.deepspeed_config, world_size, args.steps, notes)
    s.shards = Shards(args.data)
    s.objective_class = OBJECTIVES[args.objective]
    s.model_config = s.objective_class.configure(model_config_for(args.model, s.shards, args.init_from))
    if args.max_seq_len > s.model_config.max_position_embeddings:
        raise UserError(f"--max-seq-len {args.max_seq_len} is longer than the model's {s.model_config.max_position_embeddings} "
                        "positions; lower --max-seq-len or pass --model ...,max_position_embeddings=N")
    if args.attention:
        s.model_config.attention_backend = args.attention
    s.samples = PackedSamples(s.shards, s.objective_class.packing, args.max_seq_len, args.seed)
    s.masking_config = MaskingConfig.from_spec(args.masking)
    s.masker = MASKERS[s.objective_class.masking](s.masking_config, s.shards.vocab_size, s.shards.mask_id, s.shards.special_ids)
    s.plan = BatchPlan(
        n_samples=len(s.samples),
        global_batch=s.ds_config["train_batch_size"],
        micro_batch=s.ds_config["train_micro_batch_size_per_gpu"],
        world_size=world_size,
        rank=rank,
        seed=args.seed,
    )
    # Evaluation is on by default where the shards hold out text: at every checkpoint.
    s.eval_every = args.eval_every if args.eval_every is not None else (args.save_every if s.shards.valid else 0)
    s.evaluation = None
    if s.eval_every:
        s.evaluation = HeldOutEvaluation(s.shards, s.samples, s.masker, s.objective_class.parts, args.seed,
                                         args.eval_samples, s.plan.micro_batch, world_size, rank)
    s.ckpt_root = os.path.join(args.output, "checkpoints")
    s.identity = run_identity(args, s)
    s.resume_tag, s.resume_info = find_resume_point(args, s.ckpt_root)
    s.load_universal = False
    if s.resume_info:
        check_resumable(args, s)
        saved, stage = s.resume_info, s.ds_config.get("zero_optimization", {}).get("stage", 0)
        # Another number of ranks or another ZeRO stage: DeepSpeed loads through its universal format,
        # which the user's checkpoint block is told to read (the rest of the block stays as they set it).
        s.load_universal = saved["zero_stage"] > 0 and (saved["world_size"] != world_size or saved["zero_stage"] != stage)
        if s.load_universal:
            s.ds_config["checkpoint"] = {**s.ds_config.get("checkpoint", {}), "load_universal": True}
    if rank == 0:
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    return s


def check_resumable(args, s):
    """Can this run continue from the checkpoint found (s.resume_tag)? UserError saying why not."""
    check_same_run(s.resume_tag, s.resume_info, s.identity, s.objective_class.config_overrides)
    if s.resume_info.get("train_batch_size") != s.plan.global_batch:
        raise UserError(
            f"checkpoint {s.resume_tag} was trained with train_batch_size {s.resume_info.get('train_batch_size')}, "
            f"the config asks for {s.plan.global_batch}: keep the global batch when resuming (change the micro batch instead)"
        )
    stage, saved_stage = s.ds_config.get("zero_optimization", {}).get("stage", 0), s.resume_info["zero_stage"]
    if stage != saved_stage and not {stage, saved_stage} <= {1, 2}:
        # DeepSpeed 0.19's universal checkpoints load across stages 1 and 2 only (its ZeRO-3 loader looks
        # for ZeRO-3's own file names), and stage 0 keeps no partitioned optimizer state to convert.
        raise UserError(
            f"checkpoint {s.resume_tag} was saved under ZeRO stage {saved_stage} and the config asks for stage {stage}: "
            "a checkpoint moves between stages 1 and 2 only; keep zero_optimization.stage "
            f"{saved_stage} for this run"
        )
    if s.resume_info["step"] >= args.steps:
        raise UserError(f"the run in {args.output} already reached step {s.resume_info['step']} of --steps {args.steps}; raise --steps to train longer")


def run_identity(args, s):
    """What a resumed run must share with the checkpoint it continues: the model's shape, the objective,
    the data and its order. Training settings that a resume may change (dropout, attention backend,
    activation checkpointing, learning rate, --steps) are left out. Stored in each checkpoint's marker."""
    model = {k: v for k, v in s.model_config.to_dict().items() if k not in RESUMABLE_MODEL_SETTINGS}
    data = {k: s.shards.meta.get(k) for k in ("n_documents", "n_sentences", "n_tokens", "vocab_size", "tokenizer_sha256")}
    identity = {"objective": args.objective, "model": model, "data": data, "seed": args.seed,
                "max_seq_len": args.max_seq_len, "masking": s.masking_config.to_dict()}
    return json.loads(json.dumps(identity))  # as the marker will read back: lists, not tuples


RESUMABLE_MODEL_SETTINGS = ("hidden_dropout", "attention_dropout", "attention_backend", "activation_checkpointing",
                            "initializer_range")


def check_same_run(tag, info, identity, config_overrides=None):
    saved = info.get("identity")
    if saved is None:  # a checkpoint from before markers held it
        return
    if config_overrides and isinstance(saved.get("model"), dict):
        # markers written before the objective's overrides were applied to the recorded config
        saved = {**saved, "model": {**saved["model"], **config_overrides}}
    changed = []
    for key, value in identity.items():
        before = saved.get(key, value)
        if isinstance(value, dict) and isinstance(before, dict):  # keys one side lacks: another version
            changed += [f"{key}.{k} {before[k]!r} -> {value[k]!r}" for k in sorted(set(value) & set(before))
                        if before[k] != value[k]]
        elif before != value:
            changed.append(f"{key} {before!r} -> {value!r}")
    if changed:
        raise UserError(f"checkpoint {tag} belongs to a run with other settings ({'; '.join(changed)}); resume it with "
                        "the same --model, --objective, --data, --seed, --max-seq-len and --masking, or give the new "
                        "run its own --output")


def model_config_for(spec, shards, init_from=None):
    """A preset takes the shards' vocabulary size; a JSON config, or the shape of the Hugging Face
    model named by --init-from when --model is not given, must already match it."""
    from spanbert_ds.model.config import PRESETS, ModelConfig

    if spec is None and init_from:
        from spanbert_ds.interop.hf import config_from_hf

        config = config_from_hf(init_from)
        config.check_vocab(shards.vocab_size, where=f"the shards in {shards.path}")
        return config
    spec = spec or "spanbert-base"
    config = ModelConfig.from_name_or_path(spec)
    if spec.split(",")[0].strip() in PRESETS:
        return config.replace(vocab_size=shards.vocab_size, pad_token_id=shards.pad_id)
    config.check_vocab(shards.vocab_size, where=f"the shards in {shards.path}")
    return config


def find_resume_point(args, ckpt_root):
    """(tag, marker) to resume from, or (None, None). Every complete checkpoint in a run folder belongs to
    one line of training: starting afresh over one, or going back past later ones, is refused, since the
    new run would prune or overwrite them and --resume auto (or export) could later pick an old one."""
    found = checkpoint.complete_checkpoints(ckpt_root)
    if args.resume == "none":
        if found:
            raise UserError(f"--resume none, but {ckpt_root} holds checkpoints of an earlier run (the latest "
                            f"{checkpoint.tag_of(found[-1]['step'])}); continue it with --resume auto, or give this run "
                            "its own --output")
        return None, None
    if args.resume == "auto":
        return (checkpoint.tag_of(found[-1]["step"]), found[-1]) if found else (None, None)
    tag_dir = os.path.normpath(args.resume)
    if not os.path.isdir(tag_dir):
        raise UserError(f"--resume {args.resume}: no such checkpoint folder; use auto, none, or a folder like {ckpt_root}/step1000")
    if tag_dir.endswith(checkpoint.UNIVERSAL_SUFFIX):
        raise UserError(f"--resume {args.resume} is a converted copy; pass the checkpoint it was made from, {tag_dir[: -len(checkpoint.UNIVERSAL_SUFFIX)]}")
    info = checkpoint.read_marker(tag_dir)
    if os.path.abspath(os.path.dirname(tag_dir)) != os.path.abspath(ckpt_root):
        raise UserError(f"--resume {args.resume} is not under this run's checkpoints ({ckpt_root}); pass the run folder it belongs to as --output")
    later = [checkpoint.tag_of(f["step"]) for f in found if f["step"] > info["step"]]
    if later:
        raise UserError(f"--resume {args.resume}: {ckpt_root} also holds the later checkpoints {', '.join(later)}, "
                        "which this run would overwrite and which --resume auto and export would take for the latest; "
                        f"move them out of {ckpt_root} first (e.g. into {os.path.join(args.output, 'abandoned')})")
    return os.path.basename(tag_dir), info


def train(args, s, rank, world_size, stop):
    import deepspeed

    from spanbert_ds.data.loader import micro_batch_loader

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", auto_mpi_discovery=False)
    dist.barrier()  # every rank has mapped the others' shared-memory buffers: their names can go
    unlink_shared_memory_names(rank)
    if rank == 0:
        write_run_folder(args, s, world_size)

    torch.manual_seed(args.seed)  # the same initial weights on every rank and every run
    objective = s.objective_class(s.model_config)
    if args.init_from:
        from spanbert_ds.interop.hf import format_report, load_hf_into

        report = load_hf_into(objective, args.init_from)
        if rank == 0:
            print(f"initialised from {args.init_from}: {format_report(report)}", file=sys.stderr)

    load_tag = prepare_resume(s, world_size, rank)
    engine, _, _, _ = deepspeed.initialize(model=objective, model_parameters=parameter_groups(objective, s.ds_config), config=s.ds_config)
    start_step = 0
    if load_tag:
        load_path, client_state = engine.load_checkpoint(s.ckpt_root, tag=load_tag)
        if load_path is None:
            raise UserError(f"DeepSpeed could not load checkpoint {os.path.join(s.ckpt_root, load_tag)}; delete it to resume from an earlier one")
        start_step = client_state["step"]
        if load_tag.endswith(checkpoint.UNIVERSAL_SUFFIX):
            # DeepSpeed 0.19.8's universal load under ZeRO-3 gives every parameter group the same `step`
            # tensor, which torch's Adam then increments once per group at each step: give each its own.
            set_adam_step(engine, client_state.get("adam_step"))

    accumulation = s.plan.accumulation
    loader = micro_batch_loader(s.samples, s.masker, s.plan, start_step * accumulation, (args.steps - start_step) * accumulation, args.num_workers)
    monitor = Monitor(args.output, rank == 0, start_step, args.steps, *training_flops(objective, args.max_seq_len))
    if start_step and rank == 0:
        monitor.message(f"resumed from {load_tag} at step {start_step}")
    device = engine.device
    # parts, real tokens, samples, rows through the vocabulary decoders, stop flag: one all-reduce per step
    sums = torch.zeros(len(PARTS) + 4, dtype=torch.float64, device=device)
    TOKENS, SAMPLES, DECODED, STOP = range(len(PARTS), len(PARTS) + 4)
    bad_steps, exit_code, step = 0, 0, start_step

    for micro_index, batch in enumerate(loader, start=start_step * accumulation):
        seed_dropout(args.seed, s.plan, micro_index)
        batch = {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}
        out = engine(batch)
        engine.backward(out["loss"])
        if (micro_index + 1) % accumulation == 0:
            lr = engine.get_lr()[0]  # the rate this step's update uses: step() moves the schedule on
        engine.step()
        sums[: len(PARTS)] += torch.stack([out[p].detach().double() if p in out else sums.new_zeros(()) for p in PARTS])
        sums[TOKENS] += batch["attention_mask"].sum()
        sums[SAMPLES] += batch["input_ids"].shape[0]
        sums[DECODED] += batch["mlm_positions"].numel() + batch["sbo_labels"].numel()
        if (micro_index + 1) % accumulation:
            continue

        step = (micro_index + 1) // accumulation
        sums[STOP] = 1.0 if stop.signal else 0.0
        dist.all_reduce(sums)
        parts = (sums[: len(PARTS)] / (accumulation * world_size)).tolist()
        stop_requested = sums[STOP].item() > 0
        monitor.count(sums[TOKENS].item(), sums[SAMPLES].item(), sums[DECODED].item())
        sums.zero_()

        finite = all(map(math.isfinite, parts))
        bad_steps = 0 if finite else bad_steps + 1
        # (every rank takes the same decision: the evaluation's sums are all-reduced)
        evaluate = s.evaluation is not None and finite and not stop_requested and (step % s.eval_every == 0 or step == args.steps)
        if evaluate:
            started = time.perf_counter()
            held_out = s.evaluation(engine)
            monitor.exclude(time.perf_counter() - started)
        if step % args.log_every == 0 or step == args.steps or not finite or stop_requested or evaluate:
            scalars = {p: v for p, v in zip(PARTS, parts) if p in out}
            scalars.update(optimizer_scalars(engine), lr=lr)
            if evaluate:
                scalars.update(held_out)
            monitor.log(step, scalars)
        if bad_steps >= args.max_bad_steps:
            monitor.message(
                f"stopping: the loss was not finite for {bad_steps} steps in a row (last at step {step}); "
                "the last good checkpoint is kept as the latest. Lower the learning rate or use bf16/fp32, then resume."
            )
            exit_code = EXIT_DIVERGED
            break
        saved = bad_steps == 0 and (step % args.save_every == 0 or step == args.steps or stop_requested)
        if saved:
            started = time.perf_counter()
            save(engine, s, args, step, world_size)
            monitor.exclude(time.perf_counter() - started)
        if stop_requested and step < args.steps:  # at the last step the run is simply done
            what = f"saved {checkpoint.tag_of(step)}" if saved else "the loss is not finite, so nothing was saved and the latest checkpoint stays"
            monitor.message(f"stop requested ({stop.signal or 'by another rank'}): {what}; resume with --resume auto")
            exit_code = EXIT_PREEMPTED
            break
        if step == args.steps and bad_steps:
            monitor.message("the run ended on a non-finite loss, so its last step was not saved; the latest checkpoint is kept")
            exit_code = EXIT_DIVERGED

    monitor.close()
    if rank == 0 and exit_code == 0:
        print(f"done: {step} steps. TensorBoard: tensorboard --logdir {os.path.join(args.output, 'tensorboard')}  "
              f"checkpoints: {s.ckpt_root}  export: spanbert-ds export {args.output} OUT", file=sys.stderr)
    dist.barrier()
    return exit_code


def seed_dropout(seed, plan, micro_index):
    """Seed dropout by where this micro-batch sits in the data order, so a resumed run, or a run
    on another number of ranks with the same micro batch, draws the same dropout masks."""
    torch.manual_seed(hash((seed, *plan.locate(micro_index))) & 0x7FFF_FFFF_FFFF_FFFF)


def prepare_resume(s, world_size, rank):
    """Check the checkpoint to resume from (rank 0) and convert it when the number of ranks changed."""
    if not s.resume_tag:
        return None
    error, tag = None, s.resume_tag
    if rank == 0:
        try:
            checkpoint.check_loadable(os.path.join(s.ckpt_root, tag))
            if s.load_universal:
                tag = checkpoint.to_universal(s.ckpt_root, tag)
        except UserError as e:
            error = str(e)
    shared = [error, tag]
    dist.broadcast_object_list(shared, src=0)
    error, tag = shared
    if error:
        if rank == 0:
            raise UserError(error)
        raise SystemExit(UserError.exit_code)
    return tag


def save(engine, s, args, step, world_size):
    client_state = {"step": step, "samples_seen": step * s.plan.global_batch, "seed": args.seed, "adam_step": adam_step(engine)}
    info = {"world_size": world_size, "zero_stage": engine.zero_optimization_stage(), "train_batch_size": s.plan.global_batch,
            "identity": s.identity}
    checkpoint.save(engine, s.ckpt_root, step, client_state, args.keep_checkpoints, info)


def parameter_groups(objective, ds_config):
    """No weight decay on biases and LayerNorm weights (BERT's recipe)."""
    decay, no_decay = [], []
    for name, param in objective.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    weight_decay = ds_config["optimizer"].get("params", {}).get("weight_decay", 0.0)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def optimizer_scalars(engine):
    scalars = {}
    grad_norm = engine.get_global_grad_norm()
    if grad_norm is not None:
        scalars["grad_norm"] = float(grad_norm)
    if engine.fp16_enabled():
        scalars["loss_scale"] = float(getattr(engine.optimizer, "cur_scale", getattr(engine.optimizer, "loss_scale", 0.0)))
        # steps whose update fp16's loss scaling dropped (gradient overflow): they use up data but do not
        # move the weights or the learning-rate schedule
        scalars["skipped_steps"] = float(getattr(engine, "skipped_steps", 0))
    return scalars


def training_flops(objective, seq_len):
    """(FLOPs per token, FLOPs per decoded row) of a training step, forward and backward (x3).

    Per token: 2 per encoder weight (the embeddings are lookups, not matmuls) plus attention's
    2 * 2 * layers * hidden * seq. Per row through a vocabulary decoder (MLM and SBO run on the
    masked positions only): 2 * padded vocab * hidden, plus the head's own dense layers.
    """
    config = objective.config
    embeddings = sum(p.numel() for n, p in objective.named_parameters() if n.startswith("encoder.embeddings"))
    encoder = sum(p.numel() for p in objective.encoder.parameters()) - embeddings
    per_token = 3 * (2 * encoder + 4 * config.num_layers * config.hidden_size * seq_len)
    per_row = 3 * (2 * config.padded_vocab_size * config.hidden_size + 2 * 2 * config.hidden_size**2)
    return per_token, per_row


def _adam_states(engine):
    """The per-parameter states of the torch optimizer inside DeepSpeed's wrapper (if any)."""
    return getattr(engine.optimizer, "optimizer", engine.optimizer).state.values()


def adam_step(engine):
    """The optimizer's own step count (lower than the global step when fp16 skipped steps)."""
    for state in _adam_states(engine):
        if "step" in state:
            return float(state["step"])
    return None


def set_adam_step(engine, value):
    if value is None:
        return
    for state in _adam_states(engine):
        if torch.is_tensor(state.get("step")):
            state["step"] = torch.tensor(float(value), dtype=state["step"].dtype, device=state["step"].device)
        elif "step" in state:
            state["step"] = value


def write_run_folder(args, s, world_size):
    # The run folder is self-contained: export needs the tokenizer and its meta, not the shards.
    tokenizer_dir = os.path.join(args.output, "tokenizer")
    os.makedirs(tokenizer_dir, exist_ok=True)
    for name in ("tokenizer.json", "meta.json"):
        shutil.copy(os.path.join(args.data, name), os.path.join(tokenizer_dir, name))
    s.model_config.to_json(os.path.join(args.output, "model_config.json"))
    resolved = {
        "args": {k: v for k, v in vars(args).items() if k not in ("deepspeed_config",)},
        "deepspeed_config_file": args.deepspeed_config,
        "ds_config": s.ds_config,
        "objective": args.objective,
        "packing": s.objective_class.packing,
        "masking": s.objective_class.masking,
        "masking_config": s.masking_config.to_dict(),
        "world_size": world_size,
        "gradient_accumulation_steps": s.plan.accumulation,
        "git_commit": _git_commit(),
        "versions": _versions(),
    }
    with open(os.path.join(args.output, "run_config.json"), "w") as f:
        json.dump(resolved, f, indent=2, default=str)


def _git_commit():
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions():
    import deepspeed
    import numpy
    import tokenizers

    return {"python": platform.python_version(), "torch": torch.__version__, "deepspeed": deepspeed.__version__, "tokenizers": tokenizers.__version__, "numpy": numpy.__version__}
