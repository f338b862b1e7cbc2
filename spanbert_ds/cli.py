"""`spanbert-ds COMMAND ...`: one entry point, one module per command.

Each command module defines `add_arguments(parser)` and `run(args) -> int | None`.
Modules are imported only when their command runs, so `spanbert-ds prepare`
never pays for importing DeepSpeed.

SIGTERM and SIGHUP (a scheduler's or `timeout`'s stop, a closed terminal) stop a command as Ctrl-C
does: they raise KeyboardInterrupt where it is, so each command's clean-up runs (prepare and export
remove their temporary folder and lock), then one line and exit 128 + the signal's number. Training
installs its own handlers over these (run/signals.py: stop at the next step, with a checkpoint).

This module is the top of the layers (docs/architecture.md): training and fine-tuning sit below interop/,
so what they need from it (reading a Hugging Face folder, writing a fine-tuned model as one) is handed
down here, as arguments of their `run` (HANDED_DOWN).
"""

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading

from spanbert_ds.errors import UserError

COMMANDS = {
    "prepare": ("spanbert_ds.data.prepare", "tokenize a corpus into a memory-mapped shard folder"),
    "merge": ("spanbert_ds.data.merge", "join the folders of `prepare --part I/N` into one shard folder"),
    "mask-stats": ("spanbert_ds.data.mask_stats", "print the masking statistics of a shard folder"),
    "train": ("spanbert_ds.train.loop", "pretrain (same as `deepspeed train.py ...`)"),
    "preflight": ("spanbert_ds.train.preflight", "check a multi-node run before it starts (same as `train.py --preflight`)"),
    "finetune": ("spanbert_ds.finetune.loop", "fine-tune on SQuAD, classification or NER (same as `deepspeed finetune.py ...`)"),
    "export": ("spanbert_ds.interop.export", "write a run or checkpoint as a Hugging Face model folder"),
    "demo": ("spanbert_ds.demo", "prepare the built-in corpus and pretrain a small SpanBERT on CPU"),
    "bench": ("spanbert_ds.bench", "time training steps of each attention backend on this device"),
}


# command -> the keyword arguments its `run` gets from the layers above it, imported when the command runs
HANDED_DOWN = {
    "train": lambda: {"hf": importlib.import_module("spanbert_ds.interop.hf")},
    "finetune": lambda: {"export_task": importlib.import_module("spanbert_ds.interop.task_hf").export_task_hf,
                         "hf": importlib.import_module("spanbert_ds.interop.hf")},
}


class _HelpFormatter(argparse.HelpFormatter):
    """Appends each option's default to its help, unless the help says it or there is none to say."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, "", argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class _OneLineParser(argparse.ArgumentParser):
    """A mistake on the command line is one line, like every other user error, not the whole usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser():
    parser = _OneLineParser(prog="spanbert-ds", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised as Ctrl-C's KeyboardInterrupt so the same clean-up runs."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


INTERRUPTING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _raise_terminated(signum, frame):
    for sig in INTERRUPTING_SIGNALS:  # a second signal must not cut the clean-up short
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated(signum)


@contextlib.contextmanager
def _signals_interrupt():
    """TERM and HUP raise Terminated while a command runs (unless ignored, as under nohup); the handlers
    before are put back after, so main() called in a test leaves its process as it was."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.getsignal(sig) for sig in INTERRUPTING_SIGNALS}
    for sig, handler in before.items():
        if handler == signal.SIG_DFL:
            signal.signal(sig, _raise_terminated)
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def main(argv=None, prog=None):
    """Run `argv` ([COMMAND, flags...]). `prog` is what the user typed to start it, shown in usage and in
    every error line: train.py and finetune.py pass their own name (`train.py: error: ...` whether started
    by deepspeed, torchrun or python); by default `spanbert-ds COMMAND`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    top = build_parser()
    if not argv or argv[0] not in COMMANDS:
        top.parse_args(argv)  # prints usage / the unknown-command error and exits
    name, rest = argv[0], argv[1:]
    prog = prog or f"spanbert-ds {name}"
    with _signals_interrupt():
        try:
            module = importlib.import_module(COMMANDS[name][0])
            parser = _OneLineParser(prog=prog, description=COMMANDS[name][1], formatter_class=_HelpFormatter)
            module.add_arguments(parser)
            args = parser.parse_args(rest)
            return module.run(args, **HANDED_DOWN.get(name, dict)()) or 0
        except UserError as error:
            print(f"{prog}: error: {error}", file=sys.stderr)
            return error.exit_code
        except KeyboardInterrupt as interrupt:
            signum = getattr(interrupt, "signum", signal.SIGINT)
            by = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
            print(f"{prog}: interrupted{by}", file=sys.stderr)
            return 128 + signum
        except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: not an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush stays quiet
            return 0


if __name__ == "__main__":
    sys.exit(main())
