"""Output folders, made as `mkdir -p` makes them: every command that writes a folder (prepare OUT,
train --output, export OUT, the demo's work folder) creates the missing parents itself.

Only a path that cannot become a folder is refused, in one line and before anything is written:
the path, or one of its parents, is a file, or the deepest existing parent is not writable.
A command that fails after making parents removes the ones it made (`remove_made`), so a failed
command leaves nothing behind.
"""

import os

from spanbert_ds.errors import UserError


def check_creatable(path, what, writes_beside=False):
    """UserError unless `path` is a folder or can be made one (with its parents). `what` names it for
    the message, e.g. "output" or "--output"; `writes_beside`: the command writes a temporary sibling
    of `path` (then renames it), so the parent must be writable too."""
    absolute = os.path.abspath(path)
    if os.path.lexists(absolute) and not os.path.isdir(absolute):
        raise UserError(f"{what} {path} is a file (or a broken link); it must be a folder: choose another path")
    existing = os.path.dirname(absolute) if writes_beside else absolute
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"{what} {path}: {existing} is a file (or a broken link), so no folder can be made below it; "
                        "choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: {existing} is not writable by this user; choose another path")


def make_parents(path):
    """Create the missing parents of `path`. Returns the folders made, outermost first (for remove_made)."""
    missing = []
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for folder in reversed(missing):
        os.makedirs(folder, exist_ok=True)  # exist_ok: another rank or process may make it at the same time
    return missing[::-1]


def remove_made(made):
    """Remove folders that make_parents made, innermost first, as long as they are empty."""
    for folder in reversed(made):
        try:
            os.rmdir(folder)
        except OSError:
            return
