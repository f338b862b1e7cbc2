"""Resuming a run: which checkpoint, whether this run may continue it, and how DeepSpeed loads it.

A run folder holds one line of training. A resume must keep what made its batches and its model:
the objective, the model's shape, the data, the seed, the sequence length and the masking (the
run's identity, stored in every checkpoint's marker). It may change the training settings: dropout,
attention backend, activation checkpointing, learning rate, warmup, --steps, the micro batch, the
number of ranks, and the ZeRO stage between 1 and 2; not the global batch. Starting afresh over
checkpoints, or going back past later ones, is refused: the new run would prune or overwrite them,
and --resume auto or export could later take an old one for the latest.

Another number of ranks or another ZeRO stage loads through DeepSpeed's universal format: rank 0
converts the checkpoint once (checkpoint.to_universal) and the ds_config's checkpoint block gets
load_universal. checkpoint.py is the mechanism (saving, markers, conversion); this file the policy.

A new phase (NVIDIA's BERT: 90% of the steps at 128 tokens, then 512 at another batch) is a new run
folder: `--output runs/phase2 --continue-from runs/phase1 --max-seq-len 512 --global-batch-size 32768
--steps N2`. It starts from phase 1's latest complete checkpoint (or the one named), vetted as a resume's
is: the weights, the optimizer's moments and its own step count (Adam's bias correction goes on), and
the global step numbering (phase 2 logs and saves steps N1+1 .. N1+N2). What is phase 2's own: the
sequence length, batch, data (the same tokenizer), packing, masking and seed, its data order from
position 0, and its schedule (DeepSpeed's scheduler state is not loaded, as NVIDIA restarts warmup and
decay for phase 2; the optimizer's rates, betas and weight decay are phase 2's ds_config's). What it
must keep: the objective, the model's shape (whose positions must already cover the new length) and
the tokenizer. Its origin (run, tag, step) is in run_config.json and in every checkpoint's marker, so a
crash in phase 2 resumes from phase 2's own checkpoints like any run.
Why a new folder and not a flag that starts a phase inside the old one: every rule above stays true per
folder (one identity, one data order, one schedule per folder), phase 1 stays whole and exportable, and
nothing has to record or compare phase boundaries inside a folder.
"""

import json
import os

import torch
import torch.distributed as dist

from spanbert_ds.errors import UserError
from spanbert_ds.model.config import with_legacy_rtd
from spanbert_ds.train import checkpoint

# Model settings a resume may change: they do not change the shapes or the data.
RESUMABLE_MODEL_SETTINGS = ("hidden_dropout", "attention_dropout", "attention_backend", "activation_checkpointing",
                            "initializer_range", "unpad")


def run_identity(args, model_config, corpora, masking_config, weights=(1.0,)):
    """What a resumed run must share with the checkpoint it continues (see the module docstring). corpora: the
    Shards of --data, one folder or a blend's (with its normalised `weights`)."""
    model = {k: v for k, v in model_config.to_dict().items() if k not in RESUMABLE_MODEL_SETTINGS}
    data = data_identity(corpora, weights)
    identity = {"objective": args.objective, "model": model, "data": data, "seed": args.seed,
                "max_seq_len": args.max_seq_len, "packing": args.packing, "masking": masking_config.to_dict()}
    return json.loads(json.dumps(identity))  # as the marker will read back: lists, not tuples


def data_identity(corpora, weights):
    """One folder: its counts and tokenizer, as always. A blend: each folder's counts in a list (so a blend is
    never taken for one folder, nor one blend for another), the one tokenizer, and the normalised weights."""
    keys = ("n_documents", "n_sentences", "n_tokens")
    shared = {k: corpora[0].meta.get(k) for k in ("vocab_size", "tokenizer_sha256")}
    if len(corpora) == 1:
        return {**{k: corpora[0].meta.get(k) for k in keys}, **shared}
    return {**{k: [c.meta.get(k) for c in corpora] for k in keys}, **shared, "weights": [float(w) for w in weights]}


def find_resume_point(args, ckpt_root):
    """(tag, marker) to resume from, or (None, None), as --resume says: auto, none or a checkpoint folder."""
    found = checkpoint.complete_checkpoints(ckpt_root)
    if args.resume == "none":
        if found:
            latest = checkpoint.tag_of(found[-1]["step"])
            raise UserError(f"--resume none, but {ckpt_root} holds checkpoints of an earlier run (the latest "
                            f"{latest}); continue it with --resume auto, or give this run its own --output")
        return None, None
    if args.resume == "auto":
        return (checkpoint.tag_of(found[-1]["step"]), found[-1]) if found else (None, None)
    tag_dir = os.path.normpath(args.resume)
    if not os.path.isdir(tag_dir):
        raise UserError(f"--resume {args.resume}: no such checkpoint folder; use auto, none, or a folder like "
                        f"{ckpt_root}/step1000")
    if tag_dir.endswith(checkpoint.UNIVERSAL_SUFFIX):
        raise UserError(f"--resume {args.resume} is a converted copy; pass the checkpoint it was made from, "
                        f"{tag_dir[: -len(checkpoint.UNIVERSAL_SUFFIX)]}")
    marker = checkpoint.read_marker(tag_dir)
    if os.path.abspath(os.path.dirname(tag_dir)) != os.path.abspath(ckpt_root):
        raise UserError(f"--resume {args.resume} is not under this run's checkpoints ({ckpt_root}); pass the run "
                        "folder it belongs to as --output")
    later = [checkpoint.tag_of(f["step"]) for f in found if f["step"] > marker["step"]]
    if later:
        raise UserError(f"--resume {args.resume}: {ckpt_root} also holds the later checkpoints {', '.join(later)}, "
                        "which this run would overwrite and which --resume auto and export would take for the latest; "
                        f"move them out of {ckpt_root} first (e.g. into {os.path.join(args.output, 'abandoned')})")
    return os.path.basename(tag_dir), marker


def check_resumable(args, tag, marker, identity, config_overrides, global_batch, stage):
    """UserError unless this run may continue checkpoint `tag` (its `marker`)."""
    check_same_run(tag, marker, identity, config_overrides)
    if marker.get("train_batch_size") != global_batch:
        raise UserError(f"checkpoint {tag} was trained with train_batch_size {marker.get('train_batch_size')}, the "
                        f"run asks for {global_batch}: keep the global batch when resuming (train_batch_size, "
                        "--global-batch-size), and change the micro batch instead; or start a new phase with "
                        f"another batch: --output NEW_RUN --continue-from {args.output}")
    _check_stage(tag, marker["zero_stage"], stage, "this run")
    start = phase_start(marker.get("continued_from"))
    if marker["step"] >= start + args.steps:
        of = f"step {start + args.steps} (this phase starts at step {start}, --steps {args.steps})" if start else \
            f"--steps {args.steps}"
        raise UserError(f"the run in {args.output} already reached step {marker['step']} of {of}; "
                        "raise --steps to train longer")


def _check_stage(tag, saved_stage, stage, what):
    if stage != saved_stage and not {stage, saved_stage} <= {1, 2}:
        # DeepSpeed 0.19's universal checkpoints load across stages 1 and 2 only (its ZeRO-3 loader looks
        # for ZeRO-3's own file names), and stage 0 keeps no partitioned optimizer state to convert.
        raise UserError(f"checkpoint {tag} was saved under ZeRO stage {saved_stage} and the config asks for stage "
                        f"{stage}: a checkpoint moves between stages 1 and 2 only; keep zero_optimization.stage "
                        f"{saved_stage} for {what}")


def phase_start(origin):
    """The global step a run's first step follows: 0, or the step of the checkpoint its phase continued."""
    return origin["step"] if origin else 0


def find_continuation(args, marker):
    """(origin, source marker) of this run's phase. origin: {"run", "tag", "step"} of the checkpoint the phase
    started from, or None for a plain run. The source marker is that checkpoint's, when this run starts the
    phase now (`marker`, the run folder's own latest checkpoint, is None); else None: a run folder with
    checkpoints of its own resumes them, phase or not, and --continue-from must then name its origin."""
    if args.continue_from and _same_path(_run_of(args.continue_from), args.output):
        raise UserError(f"--continue-from {args.continue_from} is this run's own --output; give the new phase its "
                        "own folder (e.g. --output runs/phase2)")
    if marker is not None:
        origin = marker.get("continued_from")
        if args.continue_from and (origin is None or not _same_path(origin["run"], _run_of(args.continue_from))):
            was = f"a phase continued from {origin['run']}" if origin else "a run of its own (no --continue-from)"
            raise UserError(f"--continue-from {args.continue_from}, but {args.output} already holds checkpoints of "
                            f"{was}, the latest {checkpoint.tag_of(marker['step'])}; resume it without "
                            "--continue-from, or give the new phase its own --output")
        return origin, None
    if not args.continue_from:
        return None, None
    if args.init_from:
        raise UserError("--init-from and --continue-from both give the starting weights; pass one of them")
    run_dir, tag, source = _continuation_source(args.continue_from)
    return {"run": os.path.abspath(run_dir), "tag": tag, "step": source["step"]}, source


def check_continuable(args, origin, source, identity, config_overrides, stage):
    """UserError unless this run may start a phase from checkpoint `origin` (its marker `source`): the same
    objective, model shape and tokenizer; any sequence length, batch, data, packing, masking and seed."""
    where = os.path.join(origin["run"], "checkpoints", origin["tag"])
    saved = source.get("identity")
    if saved is not None:  # a checkpoint from before markers held it: nothing to compare
        if config_overrides and isinstance(saved.get("model"), dict):
            saved = {**saved, "model": {**saved["model"], **config_overrides}}
        changed = []
        for key in ("objective", "model", "data"):
            before, now = saved.get(key), identity.get(key)
            if key == "data":  # other data is fine, another tokenizer is not
                before, now = (_tokenizer_of(before), _tokenizer_of(now))
            if isinstance(before, dict) and isinstance(now, dict):
                changed += [f"{key}.{k} {before[k]!r} -> {now[k]!r}" for k in sorted(set(before) & set(now))
                            if before[k] != now[k]]
            elif before is not None and before != now:
                changed.append(f"{key} {before!r} -> {now!r}")
        if changed:
            raise UserError(f"--continue-from {args.continue_from}: {where} trained another model ({'; '.join(changed)}); "
                            "a new phase keeps the objective, the model's shape and the tokenizer: pass the first "
                            "phase's --objective and --model (with its max_position_embeddings, which must already "
                            "cover the longest --max-seq-len) and shards made with its tokenizer")
    _check_stage(where, source["zero_stage"], stage, "the new phase")


def _tokenizer_of(data):
    return {k: data.get(k) for k in ("vocab_size", "tokenizer_sha256")} if isinstance(data, dict) else data


def _run_of(path):
    """The run folder of --continue-from PATH: PATH, or RUN for RUN/checkpoints/stepN."""
    path = os.path.normpath(path)
    parent = os.path.dirname(path)
    return os.path.dirname(parent) if os.path.basename(parent) == "checkpoints" else path


def _same_path(a, b):
    return os.path.realpath(a) == os.path.realpath(b)


def _continuation_source(path):
    """(run folder, tag, marker) of the checkpoint --continue-from PATH names: a run folder's latest complete
    checkpoint, or a checkpoint folder RUN/checkpoints/stepN."""
    path = os.path.normpath(path)
    if path.endswith(checkpoint.UNIVERSAL_SUFFIX):
        raise UserError(f"--continue-from {path} is a converted copy; pass the checkpoint it was made from, "
                        f"{path[: -len(checkpoint.UNIVERSAL_SUFFIX)]}")
    if os.path.isfile(os.path.join(path, checkpoint.MARKER)) or os.path.basename(os.path.dirname(path)) == "checkpoints":
        return _run_of(path), os.path.basename(path), checkpoint.read_marker(path)
    if not os.path.isdir(path):
        raise UserError(f"--continue-from {path}: no such run folder; pass the --output folder of the phase before "
                        "(or one of its checkpoints, RUN/checkpoints/stepN)")
    found = checkpoint.complete_checkpoints(os.path.join(path, "checkpoints"))
    if not found:
        raise UserError(f"--continue-from {path} holds no complete checkpoint (no {path}/checkpoints/stepN/"
                        f"{checkpoint.MARKER}); pass the --output folder of a run that saved one")
    return path, checkpoint.tag_of(found[-1]["step"]), found[-1]


def check_same_run(tag, marker, identity, config_overrides=None):
    saved = marker.get("identity")
    if saved is None:  # a checkpoint from before markers held it
        return
    if config_overrides and isinstance(saved.get("model"), dict):
        # markers written before the objective's overrides were applied to the recorded config
        saved = {**saved, "model": {**saved["model"], **config_overrides}}
    if isinstance(saved.get("model"), dict):  # an RTD run from before rtd_head: what its left-out keys meant
        saved = {**saved, "model": with_legacy_rtd(saved["model"])}
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
                        "the same --model, --objective, --data, --seed, --max-seq-len, --packing and --masking, or "
                        "give the new run its own --output (a new phase at another --max-seq-len or batch, from this "
                        "run's weights and optimizer: --output NEW_RUN --continue-from THIS_RUN)")


def loads_universal(marker, world_size, stage):
    """Does resuming from `marker` on `world_size` ranks under ZeRO `stage` go through the universal format?"""
    return bool(marker) and marker["zero_stage"] > 0 and (marker["world_size"] != world_size
                                                          or marker["zero_stage"] != stage)


def with_universal_load(ds_config):
    """The ds_config with load_universal added to the user's checkpoint block (the rest kept as set)."""
    return {**ds_config, "checkpoint": {**ds_config.get("checkpoint", {}), "load_universal": True}}


def tag_to_load(run, rank):
    """The tag to hand DeepSpeed (None to start afresh): rank 0 checks every file of the checkpoint and
    converts it when needed, then checks every file of the converted copy; every rank learns the result or
    leaves with rank 0's error."""
    root, tag = _source(run)
    if not tag:
        return None
    error = None
    if rank == 0:
        try:
            checkpoint.check_loadable(os.path.join(root, tag))  # what the converter or DeepSpeed unpickles
            if run.load_universal:
                tag = checkpoint.to_universal(root, tag)
                checkpoint.check_loadable(os.path.join(root, tag))  # the copy, converted now or found there
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


def _source(run):
    """(checkpoint root, tag) the run starts from: its own latest checkpoint, else the checkpoint its phase
    continues (--continue-from), else (None, None)."""
    if run.resume_tag:
        return run.ckpt_root, run.resume_tag
    if run.continued_from:
        return os.path.join(run.continued_from["run"], "checkpoints"), run.continued_from["tag"]
    return None, None


def load(engine, run, tag):
    """Load checkpoint `tag` (tag_to_load's) into the engine; returns (the step it was saved at, the real tokens
    trained on up to it: 0 for a checkpoint from before that count was kept). Starting a phase loads the
    weights and the optimizer's state, not the scheduler's, and keeps this run's optimizer settings."""
    root, _ = _source(run)
    starts_phase = not run.resume_tag
    settings = _optimizer_settings(engine) if starts_phase else None
    load_path, client_state = engine.load_checkpoint(root, tag=tag, load_lr_scheduler_states=not starts_phase)
    if load_path is None:
        raise UserError(f"DeepSpeed could not load checkpoint {os.path.join(root, tag)}; delete it to resume "
                        "from an earlier one")
    if settings is not None:
        _set_optimizer_settings(engine, settings)
    if tag.endswith(checkpoint.UNIVERSAL_SUFFIX):
        # DeepSpeed 0.19.8's universal load under ZeRO-3 gives every parameter group the same `step`
        # tensor, which torch's Adam then increments once per group at each step: give each its own.
        _set_adam_step(engine, client_state.get("adam_step"))
    return client_state["step"], client_state.get("tokens_seen", 0)


def save(engine, run, args, step, world_size, tokens_seen):
    """A checkpoint of `step`, with what a resume needs to continue it and to check that it may."""
    # samples_seen: this phase's position in its data order
    client_state = {"step": step, "samples_seen": (step - run.phase_start) * run.plan.global_batch,
                    "tokens_seen": tokens_seen, "seed": args.seed, "adam_step": _adam_step(engine)}
    marker = {"world_size": world_size, "zero_stage": engine.zero_optimization_stage(),
              "train_batch_size": run.plan.global_batch, "identity": run.identity}
    if run.continued_from:
        marker["continued_from"] = run.continued_from
    checkpoint.save(engine, run.ckpt_root, step, client_state, args.keep_checkpoints, marker)


def _adam_states(engine):
    """The per-parameter states of the torch optimizer inside DeepSpeed's wrapper (if any)."""
    return _inner_optimizer(engine).state.values()


def _inner_optimizer(engine):
    return getattr(engine.optimizer, "optimizer", engine.optimizer)


def _optimizer_settings(engine):
    """Each parameter group's settings as this run's ds_config and scheduler made them (lr, betas, eps,
    weight decay, ...), without its parameters and step count."""
    return [{k: v for k, v in group.items() if k not in ("params", "step")}
            for group in _inner_optimizer(engine).param_groups]


def _set_optimizer_settings(engine, settings):
    """Put back what _optimizer_settings took: loading the optimizer's state also loads the phase before's
    settings, its last learning rate among them."""
    for group, saved in zip(_inner_optimizer(engine).param_groups, settings):
        group.update(saved)


def _adam_step(engine):
    """The optimizer's own step count (lower than the global step when fp16 skipped steps)."""
    for state in _adam_states(engine):
        if "step" in state:
            return float(state["step"])
    return None


def _set_adam_step(engine, value):
    if value is None:
        return
    for state in _adam_states(engine):
        if torch.is_tensor(state.get("step")):
            state["step"] = torch.tensor(float(value), dtype=state["step"].dtype, device=state["step"].device)
        elif "step" in state:
            state["step"] = value
