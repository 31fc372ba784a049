"""Writing files so that a reader never sees half of one (imports nothing from minidiff).

Every file minidiff writes (PNGs, checkpoints, tables) goes through :func:`atomic_write`: the bytes
go to a temporary file ``.<name>.<8 random characters>.tmp`` in the same folder, are flushed to
the disk (``fsync``), and the temporary file is renamed onto the target. A crash, a full disk or
Ctrl-C leaves the old file or the new one, never a mixture. The new file gets the permissions the
user's umask gives any new file (a plain ``mkstemp`` would leave it readable by its owner only).

``overwrite=False`` decides at the rename itself whether the target may be written: the
temporary file is hard-linked to the target's name, which fails when the name exists, so two runs
racing for one name cannot both win. :func:`atomic_write_many` writes a batch (the images of one
command) all or nothing: with ``--force`` the files it replaces are kept under a second name
until every new one is in place, and put back if one fails. :func:`remove_stale_temps` clears
the temporary files a killed process (SIGKILL, power loss) left behind. Under
:func:`interrupt_on_sigterm` a SIGTERM stops the process as Ctrl-C does, so the temporary file of
a write in progress is removed too.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

# a temporary file of atomic_write: "." + the target's name + "." + mkstemp's 8 characters + ".tmp"
TEMP_PATTERN = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
STARTED = time.time()       # when this process began writing (older temporary files are not its own)


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _new_temp(path: Path):
    """(fd, name) of a fresh temporary file beside ``path``, with the umask's permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, _umask_mode())
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, tmp


def _place(tmp, path: Path, overwrite: bool):
    """Rename ``tmp`` onto ``path``. Without ``overwrite`` an existing ``path`` is a FileExistsError,
    decided atomically by the file system (link fails on an existing name)."""
    if overwrite:
        os.replace(tmp, path)                 # atomic: readers see the old file or the new one
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it, or choose another --out") from None
    except OSError as exc:                    # a file system without hard links: reserve the name, then rename
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            raise FileExistsError(f"{path} exists; pass --force to overwrite it, or choose another "
                                  "--out") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _remove(name):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)


@contextlib.contextmanager
def atomic_write(path, overwrite: bool = True):
    """``with atomic_write(path) as f: f.write(...)``: a binary file object; renamed onto ``path``
    only when the block finishes without an exception (see the module docstring for ``overwrite``)."""
    path = Path(path)
    fd, tmp = _new_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _place(tmp, path, overwrite)
    except BaseException:
        _remove(tmp)
        raise


def atomic_write_bytes(path, data: bytes, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, overwrite) as f:
        f.write(data)
    return Path(path)


def _keep_aside(path: Path):
    """A second name (a temporary file's) for the existing file ``path``, so that it can be put
    back if a batch that replaces it fails: a hard link (no copy), or a copy where the file
    system has no hard links."""
    fd, name = _new_temp(path)
    os.close(fd)
    try:
        try:
            os.unlink(name)
            os.link(path, name)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            shutil.copy2(path, name)
    except BaseException:
        _remove(name)
        raise
    return name


def atomic_write_many(blobs: dict, overwrite: bool = True) -> list:
    """Write {path: bytes} all or nothing: every temporary file is written and flushed first, then
    all are renamed into place. If anything fails (a full disk, a name that exists without
    ``overwrite``, Ctrl-C), every temporary file is removed, every file already placed is removed
    or, where it replaced one (``overwrite``), the old file is put back, and the error is raised:
    the folder holds all the new files or, name by name, what it held before. Returns the paths
    written."""
    paths = [Path(path) for path in blobs]
    temps, kept, placed = [], {}, []          # kept: {path: the old file's second name}
    try:
        for path, data in zip(paths, blobs.values()):
            fd, tmp = _new_temp(path)
            temps.append(tmp)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        if overwrite:
            for path in paths:
                if path.exists():
                    kept[path] = _keep_aside(path)
        for tmp, path in zip(temps, paths):
            _place(tmp, path, overwrite)
            placed.append(path)
    except BaseException:
        for path in placed:
            if path not in kept:
                _remove(path)
                continue
            with contextlib.suppress(OSError):        # (should even this fail, the old file keeps its second name)
                os.replace(kept.pop(path), path)      # the old file back under its name
        for name in temps + list(kept.values()):
            _remove(name)
        raise
    for name in kept.values():
        _remove(name)
    return placed


def remove_stale_temps(folder) -> list:
    """Delete the temporary files of :func:`atomic_write` in ``folder`` (not below it) that are older
    than this process: a process killed mid-write leaves them, and no live writer owns them. Returns
    the files removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in os.scandir(folder):
        if not TEMP_PATTERN.match(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        with contextlib.suppress(FileNotFoundError):        # another process may clean up at the same time
            if entry.stat(follow_symlinks=False).st_mtime < STARTED:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def interrupt_on_sigterm():
    """While inside, SIGTERM (``kill``, a job scheduler's stop) raises KeyboardInterrupt as Ctrl-C
    does: cleanup runs (a half-written temporary file is removed, the last complete file stays)
    instead of the process vanishing. Only the main thread receives signals; elsewhere this does
    nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt("terminated (SIGTERM)")
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
