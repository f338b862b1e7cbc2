"""Resuming a pretraining run: whether this run may continue a checkpoint, and new phases. Which checkpoint
and how DeepSpeed loads it (another world size or ZeRO stage through the universal format) is the run
layer's, run/resume.py, shared with fine-tuning.

A run folder holds one line of training. A resume must keep what made its batches and its model:
the objective, the model's shape, the data, the seed, the sequence length and the masking (the
run's identity, stored in every checkpoint's marker). It may change the training settings: dropout,
attention backend, activation checkpointing, learning rate, warmup, --steps, the micro batch, the
number of ranks, and the ZeRO stage between 1 and 2; not the global batch. Starting afresh over
checkpoints, or going back past later ones, is refused: the new run would prune or overwrite them,
and --resume auto or export could later take an old one for the latest.


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

from spanbert_ds.errors import UserError
from spanbert_ds.model.config import with_legacy_rtd
from spanbert_ds.run import checkpoint
from spanbert_ds.run.resume import check_batch, check_stage, save

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


def check_resumable(args, tag, marker, identity, config_overrides, global_batch, stage):
    """UserError unless this run may continue checkpoint `tag` (its `marker`)."""
    check_same_run(tag, marker, identity, config_overrides)
    check_batch(tag, marker, global_batch, f"; or start a new phase with another batch: --output NEW_RUN "
                f"--continue-from {args.output}")
    check_stage(tag, marker["zero_stage"], stage, "this run")
    start = phase_start(marker.get("continued_from"))
    if marker["step"] >= start + args.steps:
        of = f"step {start + args.steps} (this phase starts at step {start}, --steps {args.steps})" if start else \
            f"--steps {args.steps}"
        raise UserError(f"the run in {args.output} already reached step {marker['step']} of {of}; "
                        "raise --steps to train longer")


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
    check_stage(where, source["zero_stage"], stage, "the new phase")


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



def source(run):
    """(checkpoint root, tag) the run starts from: its own latest checkpoint, else the checkpoint its phase
    continues (--continue-from), else (None, None)."""
    if run.resume_tag:
        return run.ckpt_root, run.resume_tag
    if run.continued_from:
        return os.path.join(run.continued_from["run"], "checkpoints"), run.continued_from["tag"]
    return None, None


def save_step(engine, run, args, step, world_size, tokens_seen):
    """A checkpoint of `step`, with what a resume needs to continue it and to check that it may."""
    # samples_seen: this phase's position in its data order
    client_state = {"samples_seen": (step - run.phase_start) * run.plan.global_batch, "tokens_seen": tokens_seen,
                    "seed": args.seed}
    marker = {"world_size": world_size, "train_batch_size": run.plan.global_batch, "identity": run.identity}
    if run.continued_from:
        marker["continued_from"] = run.continued_from
    save(engine, run.ckpt_root, step, client_state, args.keep_checkpoints, marker)
