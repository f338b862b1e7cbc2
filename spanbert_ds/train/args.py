"""Command line of a pretraining run, validated before any rank starts work (the ds_config: run/ds_config.py).

One source of truth for each setting: the engine (batch sizes, precision, ZeRO,
optimizer, schedule) lives in the ds_config; the model in --model; the run in the
flags below. The few numbers people change between runs (global batch, micro batch,
peak learning rate, warmup) also have flags, which override the ds_config's values.

The global batch (train_batch_size) is the training hyperparameter and is kept at every
world size; the micro batch is a memory choice, the most samples a rank runs at once,
and gradient accumulation makes up the rest (Megatron's --global-batch-size and
--micro-batch-size).
"""

import argparse
import os

from spanbert_ds.errors import UserError
from spanbert_ds.folders import check_creatable, check_writable
from spanbert_ds.run.ds_config import OVERRIDE_FLAGS


def add_arguments(parser):
    import deepspeed

    run = parser.add_argument_group("run")
    arg = run.add_argument
    arg("--model", default=None,
        help="a preset (tiny, small, bert-base, spanbert-base, ...) or a model JSON, with ,key=value overrides "
             "(default: spanbert-base, or the shape of --init-from)")
    arg("--objective", default="spanbert", help=objectives_help())
    arg("--data", required=True,
        help="a shard folder written by `spanbert-ds prepare`, or a blend of folders made with one tokenizer, each "
             "after its weight (Megatron's form): \"0.7 wiki/ 0.3 books/\"; samples are drawn in those shares")
    arg("--output", default="runs/pretrain", help="the run folder (config, logs, checkpoints), made if missing")
    arg("--steps", type=int, default=10000, help="optimizer steps of the whole run; the schedule spans them")
    arg("--max-seq-len", type=int, default=512, help="tokens per sample, [CLS] and [SEP] included")
    arg("--packing", default=None, choices=["full", "doc", "pair"],
        help="how samples are cut from the shards (default: the objective's; spanbert doc, roberta full, bert pair)")
    arg("--seed", type=int, default=42, help="seeds data order, masks, initialisation and dropout")
    arg("--save-every", type=int, default=1000, help="checkpoint every N steps, and at the end")
    arg("--keep-checkpoints", type=int, default=3, help="how many of the latest checkpoints to keep")
    arg("--log-every", type=int, default=10, help="log every N steps")
    arg("--resume", default="auto", help="auto (the latest checkpoint in --output), none, or a checkpoint folder")
    arg("--continue-from", default=None, metavar="RUN",
        help="a new phase in a new --output: start from RUN's latest complete checkpoint (or RUN/checkpoints/stepN) "
             "with its weights, optimizer moments and step count, and this run's --max-seq-len, batch, data order "
             "and schedule; --steps counts this phase's steps (NVIDIA's BERT: 128 tokens, then 512)")
    arg("--eval-every", type=int, default=None,
        help="score the held-out split every N steps (default: at each checkpoint if there is one; 0: never)")
    arg("--eval-samples", type=int, default=512, help="held-out blocks in the fixed evaluation set")
    arg("--masking", default="", help="masking parameters as key=value,... (e.g. mask_ratio=0.15,geometric_p=0.2)")
    arg("--init-from", default=None, metavar="HF_FOLDER",
        help="start from the weights of a Hugging Face folder (config.json and the weights) of a BERT, RoBERTa or "
             "DeBERTa V2/V3 model (model_type bert, roberta or deberta-v2) whose vocabulary is the shards'; "
             "the deberta objectives take a DeBERTa folder, the others a BERT or RoBERTa one")
    arg("--num-workers", type=int, default=2, help="DataLoader workers per rank that mask batches")
    arg("--attention", default=None, choices=attention_backends(), help="the attention backend")
    arg("--max-bad-steps", type=int, default=5, help="stop after this many non-finite losses in a row")
    arg("--preflight", action="store_true",
        help="check, the way the run will start, what it depends on (same data and settings on every rank, a "
             "shared output folder, batch sizes, the network), then exit; no training")
    run.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)), help=argparse.SUPPRESS)
    schedule = parser.add_argument_group("batch and schedule", "override the ds_config's values for this run; "
                                         "the resolved values are in RUN/run_config.json")
    arg = schedule.add_argument
    arg("--global-batch-size", type=int, default=None, metavar="N",
        help="samples per optimizer step over all ranks (train_batch_size; the paper's batch size, kept at every "
             "world size; a resume must keep it)")
    arg("--micro-batch-size", type=int, default=None, metavar="N",
        help="the most samples a rank runs at once (train_micro_batch_size_per_gpu, a memory choice): the largest "
             "size up to N that splits the global batch is used, with gradient accumulation for the rest")
    arg("--lr", type=float, default=None, help="the peak learning rate (the optimizer's lr and the scheduler's "
                                               "warmup_max_lr)")
    arg("--warmup", default=None, metavar="STEPS|FRACTION",
        help="warmup steps of the schedule (e.g. 10000) or a fraction of --steps (e.g. 0.01)")
    deepspeed.add_config_arguments(parser)
    return parser


def attention_backends():
    """--attention's choices: the keys of the attention registry (model/attention.py)."""
    from spanbert_ds.model.attention import ATTENTION_BACKENDS

    return list(ATTENTION_BACKENDS)


def objectives_help():
    """--objective's help, from the OBJECTIVES registry: each name with its losses and backbone."""
    from spanbert_ds.model.objectives import OBJECTIVES

    def summary(cls):
        backbone = {**cls.config_defaults, **cls.config_overrides}.get("backbone", "bert")
        emd = {**cls.config_defaults, **cls.config_overrides}.get("emd")
        return ("+".join(part.upper() for part in cls.parts) + ("" if backbone == "bert" else f", {backbone} backbone")
                + (", enhanced mask decoder" if emd else ""))

    return ("one of " + ", ".join(f"{name} ({summary(cls)})" for name, cls in OBJECTIVES.items())
            + "; RTD: a generator's MLM plus the discriminator's replaced-token detection")


def check_run_args(args):
    from spanbert_ds.model.objectives import OBJECTIVES

    if args.objective not in OBJECTIVES:
        raise UserError(f"unknown objective {args.objective!r}; choose one of {', '.join(OBJECTIVES)}")
    args.packing = args.packing or OBJECTIVES[args.objective].packing
    if (args.packing == "pair") != (OBJECTIVES[args.objective].packing == "pair"):
        raise UserError(f"--packing {args.packing} does not suit --objective {args.objective}: bert trains on segment "
                        "pairs (pair), the others on single segments (doc or full)")
    if not args.deepspeed_config:
        raise UserError("no DeepSpeed config: pass --deepspeed_config ds_configs/NAME.json")
    if args.init_from and not os.path.isfile(os.path.join(args.init_from, "config.json")):
        raise UserError(f"--init-from {args.init_from}: not a Hugging Face model folder (no config.json in it); "
                        "pass the folder that holds config.json and the weights")
    for name in ("steps", "max_seq_len", "save_every", "keep_checkpoints", "log_every", "max_bad_steps"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.max_seq_len < 8:
        raise UserError(f"--max-seq-len {args.max_seq_len} is too short; use at least 8")
    if args.seed < 0:
        raise UserError(f"--seed must be 0 or more, got {args.seed}")
    if args.eval_every is not None and args.eval_every < 0:
        raise UserError(f"--eval-every must be 0 (never) or more, got {args.eval_every}")
    if args.eval_samples < 1:
        raise UserError(f"--eval-samples must be at least 1, got {args.eval_samples}")
    if args.num_workers < 0:
        raise UserError("--num-workers must be 0 or more")
    check_data(args.data, args.output)
    check_creatable(args.output, "--output")  # made with its parents by rank 0 once the run starts
    for sub in ("checkpoints", "tensorboard", "tokenizer"):  # what a resume writes into
        if os.path.isdir(os.path.join(args.output, sub)):
            check_writable(os.path.join(args.output, sub), f"--output {args.output}: its {sub}/")


def check_data(value, output):
    """--data: one shard folder, or weights and folders in pairs (blend.parse_data); each folder must exist and
    stay clear of --output. Returns [(weight, folder)]."""
    from spanbert_ds.data.blend import parse_data

    blend = parse_data(value)
    for _, folder in blend:
        said = f"--data {folder}" if len(blend) == 1 else f"--data: {folder}"
        if not os.path.isdir(folder):
            if os.path.exists(folder):
                raise UserError(f"{said} is a file; --data takes a shard folder: make one with "
                                f"`spanbert-ds prepare {folder} SHARD_FOLDER`")
            raise UserError(f"{said}: no such shard folder; make one with `spanbert-ds prepare CORPUS {folder}`")
        data, out = os.path.abspath(folder), os.path.abspath(output)
        if out == data or out.startswith(data + os.sep) or data.startswith(out + os.sep):
            raise UserError(f"--output {output} and --data {folder} overlap; give the run its own folder")
    return blend


def overrides_of(args):
    """{flag dest: value} of the override flags given on the command line (see OVERRIDE_FLAGS)."""
    return {name: getattr(args, name) for name in OVERRIDE_FLAGS if getattr(args, name, None) is not None}
