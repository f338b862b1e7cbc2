"""`spanbert-ds demo`: the README's main command.

Prepares the built-in corpus with a held-out split, pretrains a tiny SpanBERT on CPU for about four
minutes through the deepspeed launcher (2 ranks, ZeRO-2), scoring the held-out split as it goes,
exports it to the Hugging Face format, and shows what it learned: its held-out MLM accuracy against
the unigram baseline, and transformers' fill-mask on held-out sentences from the exported folder.

The recipe (VOCAB_SIZE, MODEL, STEPS, ds_configs/demo_cpu_zero2.json) is the one that did best within about
480 CPU-seconds of training on 2 ranks; what each part of it bought is in docs/architecture.md (the demo).
"""

import json
import os
import shutil
import subprocess
import sys

from spanbert_ds.errors import UserError
from spanbert_ds.folders import check_creatable
from spanbert_ds.run.distributed import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VALID_FRACTION = 0.05  # of the built-in corpus's 572 documents: about 25 (20k tokens) held out
VOCAB_SIZE = 4000  # WordPiece; 8000 cost the tiny model 10% of its held-out accuracy in the same steps
# tiny without dropout: a model that sees 3M tokens (6 passes) underfits them, and dropout only slows it down.
MODEL = "tiny,hidden_dropout=0,attention_dropout=0"
STEPS = 1500  # about 0.2 CPU-second each on 2 ranks (one thread each): 324 CPU-s with start-up and evaluations


def add_arguments(parser):
    arg = parser.add_argument
    arg("--workdir", default="runs/demo", help="where the shards, the run and the exported model go (made if missing)")
    arg("--ranks", type=int, default=2, help="processes the deepspeed launcher starts")
    arg("--steps", type=int, default=STEPS, help="optimizer steps")
    arg("--model", default=MODEL, help="model preset, with key=value overrides")
    arg("--max-seq-len", type=int, default=128, help="tokens per sample")
    arg("--deepspeed_config", default=os.path.join(REPO, "ds_configs", "demo_cpu_zero2.json"),
        help="the DeepSpeed config")
    arg("--examples", type=int, default=3, help="held-out sentences shown with their fill-mask predictions")


def run(args):
    for name in ("ranks", "steps", "max_seq_len"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.examples < 0:
        raise UserError(f"--examples must be 0 or more, got {args.examples}")
    train_script = os.path.join(REPO, "train.py")
    if not os.path.isfile(train_script):
        raise UserError(f"the demo runs {train_script}, which is not there: run it from a source checkout of "
                        "spanbert_ds")
    check_creatable(args.workdir, "--workdir")
    shards = os.path.join(args.workdir, "shards")
    run_dir = os.path.join(args.workdir, "run")
    hf_dir = os.path.join(args.workdir, "hf")
    launcher = _deepspeed_launcher()

    if _has_held_out_split(shards):
        _step(f"1/5 using the prepared corpus in {shards}")
    else:
        _step(f"1/5 preparing the built-in corpus (CPython's docs and docstrings) into {shards}, "
              f"{VALID_FRACTION:.0%} of its documents held out")
        _call([sys.executable, "-m", "spanbert_ds.cli", "prepare", "python-docs", shards, "--tokenizer", "wordpiece",
               "--vocab-size", str(VOCAB_SIZE), "--valid-fraction", str(VALID_FRACTION), "--overwrite"])
    _step("2/5 masking statistics of the SpanBERT span masker on it")
    _call([sys.executable, "-m", "spanbert_ds.cli", "mask-stats", shards, "--packing", "doc",
           "--max-seq-len", str(args.max_seq_len), "--batches", "20"])

    _step(f"3/5 pretraining a SpanBERT (MLM + SBO; --model {args.model}) for {args.steps} steps: deepspeed launcher, "
          f"{args.ranks} CPU rank{'s' if args.ranks > 1 else ''}, ZeRO-2, the held-out split scored every "
          f"{_eval_every(args.steps)} steps")
    command = [
        launcher, "--num_gpus", str(args.ranks), "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        train_script, "--deepspeed_config", args.deepspeed_config, "--model", args.model, "--objective", "spanbert",
        "--data", shards, "--output", run_dir, "--steps", str(args.steps), "--max-seq-len", str(args.max_seq_len),
        "--save-every", str(args.steps), "--eval-every", str(_eval_every(args.steps)), "--log-every", "10",
        "--num-workers", "1", "--resume", "none",
    ]
    if os.path.isdir(run_dir):  # each demo trains afresh (--resume none refuses a folder with checkpoints)
        print(f"(replacing the previous demo run in {run_dir})", flush=True)
        shutil.rmtree(run_dir)
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // args.ranks)))
    _call(command, env=env)

    _step(f"4/5 exporting to the Hugging Face format in {hf_dir}")
    _call([sys.executable, "-m", "spanbert_ds.cli", "export", run_dir, hf_dir, "--overwrite"])

    _step("5/5 what it learned")
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    first, last = rows[0], rows[-1]
    held_out = [row for row in rows if "eval_mlm_accuracy" in row][-1]
    print(f"training loss fell from {first['loss']:.3f} (step {first['step']}) to {last['loss']:.3f} "
          f"(step {last['step']}); mlm {first['mlm_loss']:.3f} -> {last['mlm_loss']:.3f}, "
          f"sbo {first['sbo_loss']:.3f} -> {last['sbo_loss']:.3f}")
    print(f"held-out MLM accuracy {100 * held_out['eval_mlm_accuracy']:.1f}% (loss {held_out['eval_mlm_loss']:.3f}) "
          f"against {100 * held_out['eval_mlm_unigram_accuracy']:.1f}% for the unigram baseline "
          f"(loss {held_out['eval_mlm_unigram_loss']:.3f}); SBO accuracy {100 * held_out['eval_sbo_accuracy']:.1f}%")
    if args.examples:
        show_fill_mask(hf_dir, shards, args.examples)
    print(
        f"\nTensorBoard logs: tensorboard --logdir {os.path.join(run_dir, 'tensorboard')}\n"
        f"metrics:          {os.path.join(run_dir, 'metrics.jsonl')}\n"
        f"Hugging Face:     {hf_dir}  (transformers.BertForPreTraining.from_pretrained({hf_dir!r}))"
    )


def _eval_every(steps):
    return max(1, steps // 6)


def _has_held_out_split(shards):
    """Whether `shards` is the demo's corpus as this version prepares it (an older demo's is prepared again)."""
    try:
        with open(os.path.join(shards, "meta.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    return "valid_split" in meta and meta.get("vocab_size") == VOCAB_SIZE


def held_out_examples(shards_path, count, min_tokens=8, max_tokens=40):
    """Up to `count` held-out sentences as (ids, position of one whole single-piece word to mask).

    The word is the middle one among the sentence's alphabetic words of at least 3 letters that are a
    single token, so that [MASK] stands for exactly the word. Deterministic: the first sentences that
    qualify (mostly words, not code) in a fixed shuffle of the held-out split."""
    import numpy as np

    from spanbert_ds.data.shards import Shards

    valid = Shards(shards_path).valid
    tokenizer = valid.tokenizer()
    offsets = np.asarray(valid.sent_offsets)
    found = []
    for i in np.random.default_rng(0).permutation(len(offsets) - 1):
        ids = np.asarray(valid.tokens[offsets[i]:offsets[i + 1]]).astype(int)
        if not min_tokens <= len(ids) <= max_tokens:
            continue
        starts = np.append(np.asarray(valid.word_starts[offsets[i]:offsets[i + 1]]) > 0, True)
        pieces = [tokenizer.id_to_token(int(t)) for t in ids]
        if sum(piece.isalpha() for piece in pieces) < 0.75 * len(pieces):
            continue  # code or markup rather than a sentence
        words = [t for t in range(len(ids)) if starts[t] and starts[t + 1] and _is_word(pieces[t])]
        if words:
            found.append((ids, words[len(words) // 2]))
        if len(found) == count:
            break
    return found, tokenizer, valid.mask_id


def _is_word(piece):
    return piece.isalpha() and len(piece) >= 3


def show_fill_mask(hf_dir, shards, count):
    """transformers' fill-mask pipeline, from the exported folder, on held-out sentences."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    fill = transformers.pipeline("fill-mask", model=hf_dir, tokenizer=hf_dir, device="cpu")
    examples, tokenizer, mask_id = held_out_examples(shards, count)
    print(f"\nfill-mask on held-out sentences (transformers.pipeline('fill-mask', model={hf_dir!r})):")
    for ids, position in examples:
        truth = tokenizer.id_to_token(int(ids[position]))
        masked = ids.copy()
        masked[position] = mask_id
        text = tokenizer.decode(masked.tolist(), skip_special_tokens=False)
        guesses = fill(text, top_k=5)
        shown = ", ".join(f"{g['token_str']} {g['score']:.2f}" for g in guesses)
        rank = next((f"ranked {k}" for k, g in enumerate(guesses, 1) if g["token_str"] == truth), "not in the top 5")
        print(f"  {text}\n      true: {truth} ({rank})   predicted: {shown}")


def _deepspeed_launcher():
    """The `deepspeed` script of this Python's environment, also when that environment is not activated."""
    beside = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    found = beside if os.path.isfile(beside) else shutil.which("deepspeed")
    if not found:
        raise UserError("the `deepspeed` launcher is not installed in this environment; run `make demo`, or "
                        "`pip install deepspeed`")
    return found


def _step(text):
    print(f"\n== {text}", flush=True)


def _call(command, **kwargs):
    done = subprocess.run(command, **kwargs)
    if done.returncode != 0:
        raise UserError(f"`{' '.join(command[:4])} ...` failed with exit code {done.returncode} (its output is above)")
