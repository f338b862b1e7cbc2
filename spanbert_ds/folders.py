"""Output folders, made as `mkdir -p` makes them: every command that writes a folder (prepare OUT,
train --output, export OUT, the demo's work folder) creates the missing parents itself.

Only a path that cannot become a folder is refused, in one line and before anything is written:
the path, or one of its parents, is a file, or the deepest existing parent is not writable.
A command that fails after making parents removes the ones it made (`remove_made`), so a failed
command leaves nothing behind.
"""

import atexit
import errno
import os
import shutil

from spanbert_ds.errors import UserError

# How a full disk shows when no errno comes with it: torch's zip writer, safetensors.
_NO_SPACE_WORDS = ("No space left", "unexpected pos", "file write failed", "Disk quota exceeded")


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
    check_writable(existing, f"{what} {path}: {existing}")


def check_replaceable(path, what, overwrite):
    """UserError unless `path` may be written by a command that builds a folder beside it and renames it into
    place (prepare, export): it must not exist, or exist with `overwrite`, and not be a symbolic link (the
    link would be replaced, not the folder it names). Called at the start, before any work."""
    if os.path.islink(path) and os.path.isdir(path):
        target = os.path.realpath(path)
        if overwrite:
            raise UserError(f"{what} {path} is a symbolic link to {target}; --overwrite replaces a folder, not a "
                            f"link: pass {target} itself")
        raise UserError(f"{what} {path} (a link to {target}) already exists; choose another folder or pass "
                        f"{target} with --overwrite to replace it")
    if os.path.exists(path) and not overwrite:
        raise UserError(f"{what} {path} already exists; choose another folder or pass --overwrite to replace it")


def check_writable(folder, named):
    """UserError unless this user can create files in `folder` (an existing folder); `named` starts the message."""
    if not os.access(folder, os.W_OK | os.X_OK):
        read_only = hasattr(os, "statvfs") and os.statvfs(folder).f_flag & getattr(os, "ST_RDONLY", 1)
        why = "is on a read-only file system" if read_only else "is not writable by this user"
        raise UserError(f"{named} {why}; choose another path")


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


def out_of_space(error):
    """Did writing fail because the disk (or the user's quota) is full?"""
    if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(words in str(error) for words in _NO_SPACE_WORDS)


def free_mb(path):
    """Free space of the file system that holds `path` (or its deepest existing parent), in MB."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free / 2**20


def size_mb(path):
    """The size of a file or of everything under a folder, in MB (0 if it is not there)."""
    if os.path.isfile(path):
        return os.path.getsize(path) / 2**20
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files) / 2**20


def umask_mode():
    """The mode a file gets from open() under this process's umask (0644 under umask 022)."""
    try:
        with open("/proc/self/status") as f:  # read, so no other thread ever creates a file under umask 0
            mask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0)
        os.umask(mask)
    return 0o666 & ~mask


def give_umask_mode(path):
    """Give a file the mode open() gives every other file: writers such as safetensors' save_file make their
    files 0600, which no one else on a shared cluster can read."""
    os.chmod(path, umask_mode())


def save_safetensors(tensors, path, metadata=None):
    """safetensors' save_file, with the mode every other file of the folder gets (give_umask_mode)."""
    from safetensors.torch import save_file

    save_file(tensors, path, metadata={"format": "pt"} if metadata is None else metadata)
    give_umask_mode(path)


def temporary_sibling(path):
    """Where a command builds `path` before renaming it into place: PATH.tmp-PID."""
    return f"{os.path.normpath(path)}.tmp-{os.getpid()}"


def remove_stale_siblings(path):
    """Remove the PATH.tmp-PID folders that commands killed on this host left behind (their PID is gone)."""
    parent, name = os.path.split(os.path.abspath(path))
    try:
        entries = os.listdir(parent)
    except OSError:
        return
    for entry in entries:
        pid = entry[len(name) + len(".tmp-"):]
        if entry.startswith(name + ".tmp-") and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderLock:
    """An exclusive lock, for as long as this process holds it, on what `path` names (a run folder, a shard
    folder being made): flock on a lock file, which the kernel releases on any exit, kill -9 included, so
    a dead run leaves no lock that stops the next. The file holds the holder's host and PID, for the
    message the next one gets; `release` removes it.

    A second command on the same folder waits up to `wait` seconds (a requeued SLURM job may start while
    the ranks of the job it replaces are still exiting), then refuses with one line.

    A process that exits while holding a lock (an error, a full disk, Ctrl-C) releases it at exit too, so
    the folder is left as it was found; only a kill -9 leaves the (unlocked) file."""

    def __init__(self, lock_file, what, wait=10.0):
        self.lock_file, self.what, self.wait = lock_file, what, wait
        self.fd = self.pid = None

    def acquire(self):
        import fcntl
        import socket
        import time

        deadline = time.monotonic() + self.wait
        while True:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.path.exists(self.lock_file) and os.path.samestat(os.fstat(fd), os.stat(self.lock_file)):
                    break  # locked, and not a file its last holder removed meanwhile
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "a process that has just started"
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise UserError(f"{self.what} is in use by another run ({holder}); wait for it to end or stop it, "
                                    f"or choose another folder (a lock held by a host that died goes when its "
                                    f"file-system lease does, {self.lock_file})") from None
            os.close(fd)
            time.sleep(0.2)
        self.fd, self.pid = fd, os.getpid()  # held from here: an interrupt now still removes the file
        _HELD.add(self)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"host {socket.gethostname()}, pid {os.getpid()}, since {time.strftime('%F %T')}\n".encode(),
                      0)
        except BaseException:
            self.release()
            raise
        return self

    def release(self):
        _HELD.discard(self)
        if self.fd is not None and self.pid == os.getpid():  # not in a forked child, which holds a copy
            try:
                os.remove(self.lock_file)  # while still holding it, so no one locks a file about to vanish
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


_HELD = set()  # the FolderLocks this process holds, released at exit by whatever path it takes


@atexit.register
def _release_held():
    for held in list(_HELD):
        held.release()
