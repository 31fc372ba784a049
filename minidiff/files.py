"""Writing files so that a reader never sees half of one (imports nothing from minidiff).

Every file minidiff writes (PNGs, checkpoints, tables) goes through :func:`atomic_write`: the bytes
go to a temporary file in the same folder, are flushed to the disk (``fsync``), and the temporary
file is renamed over the target. A crash, a full disk or Ctrl-C leaves the old file or the new one,
never a mixture. The new file gets the permissions the user's umask gives any new file (a plain
``mkstemp`` would leave it readable by its owner only).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_write(path):
    """``with atomic_write(path) as f: f.write(...)``: a binary file object; renamed onto ``path``
    only when the block finishes without an exception."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, _umask_mode())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)                # atomic: readers see the old file or the new one
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as f:
        f.write(data)
    return Path(path)
