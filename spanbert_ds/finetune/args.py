"""Command line of a fine-tuning run, checked before any rank starts work.

As in pretraining, the engine (batch sizes, precision, ZeRO, optimizer, schedule) lives in the
ds_config; the flags say what to fine-tune, on what, and for how long.
"""

import argparse
import os

from spanbert_ds.errors import UserError
from spanbert_ds.folders import check_creatable


def add_arguments(parser):
    import deepspeed

    from spanbert_ds.finetune.tasks import TASKS

    run = parser.add_argument_group("run")
    arg = run.add_argument
    arg("--task", required=True, choices=list(TASKS), help="squad (extractive QA), classify (texts, pairs) or ner")
    arg("--init", required=True, help="a pretraining run folder (or RUN/checkpoints/stepN) or a Hugging Face BERT folder")
    arg("--train", required=True, help="the training file (SQuAD JSON; CSV/TSV/JSONL; CoNLL)")
    arg("--eval", default=None, help="the file scored at the end (and with --eval-every), in the same format")
    arg("--output", default=None, help="the run folder, made if missing (default: runs/finetune-TASK)")
    arg("--epochs", type=float, default=2.0, help="passes over the training features")
    arg("--steps", type=int, default=None, help="optimizer steps of the whole run (instead of --epochs)")
    arg("--max-seq-len", type=int, default=None, help="tokens per input (default: 384 for squad, else 128)")
    arg("--train-limit", type=int, default=None, help="use the first N training examples only")
    arg("--eval-limit", type=int, default=None, help="score the first N evaluation examples only")
    arg("--seed", type=int, default=42, help="seeds the head's initialisation, the data order and dropout")
    arg("--save-every", type=int, default=None, help="checkpoint every N steps (default: each epoch), and at the end")
    arg("--keep-checkpoints", type=int, default=2, help="how many of the latest checkpoints to keep")
    arg("--log-every", type=int, default=10, help="log every N steps")
    arg("--eval-every", type=int, default=0, help="also score --eval every N steps (0: at the end only)")
    arg("--resume", default="auto", help="auto (the latest checkpoint in --output), none, or a checkpoint folder")
    arg("--sift", nargs="?", const="", default=None, metavar="KEY=VALUE,...",
        help="add SiFT's adversarial loss (DeBERTa); optional weight=1,init=1e-2,step=1e-4")
    squad = parser.add_argument_group("squad")
    squad.add_argument("--doc-stride", type=int, default=128, help="tokens between the starts of a context's windows")
    squad.add_argument("--max-query-len", type=int, default=64, help="question tokens kept")
    squad.add_argument("--max-answer-len", type=int, default=30, help="longest answer predicted, in tokens")
    squad.add_argument("--n-best", type=int, default=20, help="start and end candidates per window")
    run.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)), help=argparse.SUPPRESS)
    deepspeed.add_config_arguments(parser)
    return parser


def check_args(args):
    """Fill the defaults that depend on the task; one line for anything that cannot work."""
    from spanbert_ds.finetune.tasks import DEFAULT_MAX_SEQ_LEN

    if not args.deepspeed_config:
        raise UserError("no DeepSpeed config: pass --deepspeed_config ds_configs/NAME.json "
                        "(ds_configs/finetune_cpu_zero2.json on a CPU)")
    args.output = args.output or os.path.join("runs", f"finetune-{args.task}")
    args.max_seq_len = args.max_seq_len or DEFAULT_MAX_SEQ_LEN[args.task]
    for name in ("max_seq_len", "keep_checkpoints", "log_every", "doc_stride", "max_query_len", "max_answer_len",
                 "n_best"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("steps", "save_every", "train_limit", "eval_limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.epochs <= 0 and args.steps is None:
        raise UserError(f"--epochs must be above 0, got {args.epochs}")
    if args.eval_every < 0:
        raise UserError(f"--eval-every must be 0 (at the end only) or more, got {args.eval_every}")
    if args.resume not in ("auto", "none"):
        raise UserError(f"--resume {args.resume}: fine-tuning takes auto or none")
    if args.task == "squad" and args.max_seq_len < args.max_query_len + 8:
        raise UserError(f"--max-seq-len {args.max_seq_len} leaves no room for the context after a question of up to "
                        f"--max-query-len {args.max_query_len} tokens; raise the first or lower the second")
    for flag in ("train", "eval"):
        path = getattr(args, flag)
        if path is not None and not os.path.isfile(path):
            raise UserError(f"--{flag} {path}: no such file")
    check_creatable(args.output, "--output")
