"""`spanbert-ds COMMAND ...`: one entry point, one module per command.

Each command module defines `add_arguments(parser)` and `run(args) -> int | None`.
Modules are imported only when their command runs, so `spanbert-ds prepare`
never pays for importing DeepSpeed.
"""

import argparse
import importlib
import os
import sys

from spanbert_ds.errors import UserError

COMMANDS = {
    "prepare": ("spanbert_ds.data.prepare", "tokenize a corpus into a memory-mapped shard folder"),
    "mask-stats": ("spanbert_ds.data.mask_stats", "print the masking statistics of a shard folder"),
    "train": ("spanbert_ds.train.loop", "pretrain (same as `deepspeed train.py ...`)"),
    "preflight": ("spanbert_ds.train.preflight", "check a multi-node run before it starts (same as `train.py --preflight`)"),
    "finetune": ("spanbert_ds.finetune.loop", "fine-tune on SQuAD, classification or NER (same as `deepspeed finetune.py ...`)"),
    "export": ("spanbert_ds.interop.export", "write a run or checkpoint as a Hugging Face model folder"),
    "demo": ("spanbert_ds.demo", "prepare the built-in corpus and pretrain a small SpanBERT on CPU"),
    "bench": ("spanbert_ds.bench", "time training steps of each attention backend on this device"),
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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    top = build_parser()
    if not argv or argv[0] not in COMMANDS:
        top.parse_args(argv)  # prints usage / the unknown-command error and exits
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    parser = _OneLineParser(prog=f"spanbert-ds {name}", description=COMMANDS[name][1],
                            formatter_class=_HelpFormatter)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return module.run(args) or 0
    except UserError as error:
        print(f"spanbert-ds {name}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"spanbert-ds {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush stays quiet
        return 0


if __name__ == "__main__":
    sys.exit(main())
