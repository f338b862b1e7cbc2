"""`spanbert-ds export RUN OUT`: a pretraining run's checkpoint as a Hugging Face model folder.

ZeRO shards are consolidated with DeepSpeed's zero_to_fp32; the folder itself is
written by interop/hf.py, the one place that knows Hugging Face's names (interop/rtd_hf.py
adds ELECTRA's). A replaced-token detection run (electra, debertav3) exports its discriminator,
or with --generator its generator.
"""

import json
import os
import shutil

from spanbert_ds.errors import UserError
from spanbert_ds.folders import (check_creatable, check_replaceable, free_mb, make_parents, out_of_space,
                                 remove_made, remove_stale_siblings, temporary_sibling)
from spanbert_ds.run.folder import load_run, read_imported, run_and_tag


def add_arguments(parser):
    parser.add_argument("run", help="a run folder of train.py, or one of its checkpoints (RUN/checkpoints/stepN)")
    parser.add_argument("out", help="the Hugging Face model folder to write (made with its parents)")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint tag such as step1000 (default: the latest)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--generator", action="store_true",
                        help="export the generator of an electra or debertav3 run instead of its discriminator")


def run(args):
    from spanbert_ds.interop.hf import export_hf

    run_dir, tag = run_and_tag(args.run, args.checkpoint)
    _check_out(args.out, run_dir, args.overwrite)  # before the slow consolidation, and never over the run
    if args.generator:
        _check_generator(run_dir)  # likewise
    objective, tag = load_run(run_dir, tag)
    made = make_parents(args.out)
    remove_stale_siblings(args.out)
    tmp = temporary_sibling(args.out)
    try:
        export_hf(objective, objective.config, os.path.join(run_dir, "tokenizer"), tmp, generator=args.generator,
                  imported=read_imported(run_dir))
        if os.path.exists(args.out):  # only now, with the new folder complete
            shutil.rmtree(args.out)
        os.replace(tmp, args.out)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_made(made)
        if isinstance(error, Exception) and out_of_space(error):
            raise UserError(f"export: no space left on the device of {args.out} ({free_mb(args.out):.0f} MB free; the "
                            f"model takes about {4 * sum(p.numel() for p in objective.parameters()) / 2**20:.0f} MB "
                            "in fp32); nothing was written: free space or choose another path") from None
        raise
    with open(os.path.join(args.out, "config.json")) as f:
        architecture = json.load(f)["architectures"][0]
    what = f"the generator of the {objective.name}" if args.generator else objective.name
    print(f"exported {what} model of {os.path.join(run_dir, 'checkpoints', tag)} to {args.out} (load "
          f"it with transformers.{architecture}.from_pretrained)")


def _check_generator(run_dir):
    """--generator on a run of an objective without one, refused from run_config.json (a folder without one is
    load_run's to report)."""
    from spanbert_ds.interop.rtd_hf import NO_GENERATOR
    from spanbert_ds.model.objectives import OBJECTIVES

    path = os.path.join(run_dir, "run_config.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        name = json.load(f).get("objective")
    if name in OBJECTIVES and "rtd" not in OBJECTIVES[name].parts:
        raise UserError(NO_GENERATOR.format(what=f"{run_dir}, a run of the {name} objective,"))


def _check_out(out, run_dir, overwrite):
    out_abs, run_abs = os.path.abspath(out), os.path.abspath(run_dir)
    if out_abs == run_abs or out_abs.startswith(run_abs + os.sep) or run_abs.startswith(out_abs + os.sep):
        raise UserError(f"export: {out} is the run folder {run_dir}, or inside it, or holds it; write the Hugging Face "
                        "folder somewhere else (e.g. next to the run)")
    check_creatable(out, "export: output", writes_beside=True)
    check_replaceable(out, "export: output", overwrite)
