"""Writing files: atomic, umask permissions, refusals decided at the rename, batches all or nothing,
stale temporary files cleaned, SIGTERM handled as Ctrl-C."""
import errno
import os
import signal
import time

import pytest

from minidiff import files


def names(folder):
    return sorted(os.listdir(folder))


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_new_file_gets_the_permissions_the_umask_gives(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = files.atomic_write_bytes(tmp_path / "x.png", b"data")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode


def test_without_overwrite_an_existing_file_is_refused_and_kept(tmp_path):
    (tmp_path / "x.png").write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="x.png exists; pass --force"):
        files.atomic_write_bytes(tmp_path / "x.png", b"new", overwrite=False)
    assert (tmp_path / "x.png").read_bytes() == b"keep me" and names(tmp_path) == ["x.png"]


def test_the_refusal_is_decided_at_the_rename_not_before(tmp_path):
    target = tmp_path / "x.png"
    with pytest.raises(FileExistsError):
        with files.atomic_write(target, overwrite=False) as f:
            f.write(b"mine")
            target.write_bytes(b"another run's")        # appears while this write is under way
    assert target.read_bytes() == b"another run's" and names(tmp_path) == ["x.png"]


def test_overwrite_replaces_the_file(tmp_path):
    (tmp_path / "x.png").write_bytes(b"old")
    files.atomic_write_bytes(tmp_path / "x.png", b"new")
    assert (tmp_path / "x.png").read_bytes() == b"new" and names(tmp_path) == ["x.png"]


def test_a_batch_is_written_whole(tmp_path):
    blobs = {tmp_path / f"g_{i}.png": bytes([i]) for i in range(3)}
    assert files.atomic_write_many(blobs) == list(blobs)
    assert all(path.read_bytes() == data for path, data in blobs.items())


def test_a_full_disk_in_the_middle_of_a_batch_leaves_no_file(tmp_path, monkeypatch):
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)
    monkeypatch.setattr(files.os, "fsync", fsync)
    blobs = {tmp_path / f"g_{i}.png": b"x" * 10 for i in range(4)}
    with pytest.raises(OSError, match="No space left"):
        files.atomic_write_many(blobs)
    assert names(tmp_path) == []


def test_a_name_taken_during_a_batch_leaves_none_of_the_others(tmp_path):
    (tmp_path / "g_2.png").write_bytes(b"keep me")
    blobs = {tmp_path / f"g_{i}.png": b"new" for i in range(1, 4)}
    with pytest.raises(FileExistsError, match="g_2.png exists"):
        files.atomic_write_many(blobs, overwrite=False)
    assert names(tmp_path) == ["g_2.png"] and (tmp_path / "g_2.png").read_bytes() == b"keep me"


def test_an_interrupted_batch_leaves_no_file(tmp_path, monkeypatch):
    def link(src, dst):
        raise KeyboardInterrupt
    monkeypatch.setattr(files.os, "link", link)
    with pytest.raises(KeyboardInterrupt):
        files.atomic_write_many({tmp_path / "a.png": b"a", tmp_path / "b.png": b"b"}, overwrite=False)
    assert names(tmp_path) == []


def test_stale_temporary_files_older_than_the_process_are_removed(tmp_path):
    old = tmp_path / ".g.png.abcd_123.tmp"               # what a killed write leaves
    fresh = tmp_path / ".h.png.zyxw_987.tmp"             # a write of this process, under way
    other = tmp_path / ".notes.tmp"                      # not a name atomic_write makes
    for path in (old, fresh, other):
        path.write_bytes(b"x")
    long_ago = files.STARTED - 3600
    os.utime(old, (long_ago, long_ago))
    os.utime(other, (long_ago, long_ago))
    assert files.remove_stale_temps(tmp_path) == [old]
    assert names(tmp_path) == sorted([fresh.name, other.name])
    assert files.remove_stale_temps(tmp_path / "missing") == []


def test_sigterm_is_a_keyboard_interrupt_inside_and_default_after(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        with files.interrupt_on_sigterm():
            with files.atomic_write(tmp_path / "x.png") as f:
                f.write(b"half")
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)                            # the handler runs at the next bytecode
    assert signal.getsignal(signal.SIGTERM) == before
    assert names(tmp_path) == []                         # the half-written temporary file is gone


def failing_on_call(n, real, error):
    """``real`` (an os function), except that its n-th call raises ``error``."""
    calls = []

    def call(*args, **kwargs):
        calls.append(args)
        if len(calls) == n:
            raise error
        return real(*args, **kwargs)
    return call


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()],
                         ids=["disk full", "Ctrl-C"])
def test_a_forced_batch_that_fails_half_way_keeps_every_old_file(tmp_path, monkeypatch, error):
    old = {tmp_path / f"g_{i}.png": f"old {i}".encode() for i in range(1, 4)}
    for path, data in old.items():
        path.write_bytes(data)
    blobs = {**{path: b"new" for path in old}, tmp_path / "g_4.png": b"new", tmp_path / "g.png": b"new grid"}
    # the third rename fails: g_1 and g_2 are new by then, and must become old again
    monkeypatch.setattr(files.os, "replace", failing_on_call(3, os.replace, error))
    with pytest.raises(type(error)):
        files.atomic_write_many(blobs, overwrite=True)
    assert names(tmp_path) == sorted(path.name for path in old)       # no new file, no temporary one
    assert all(path.read_bytes() == data for path, data in old.items())


def test_a_forced_batch_replaces_every_file_and_keeps_no_second_name(tmp_path):
    (tmp_path / "g_1.png").write_bytes(b"old")
    blobs = {tmp_path / "g_1.png": b"new 1", tmp_path / "g_2.png": b"new 2"}
    files.atomic_write_many(blobs, overwrite=True)
    assert names(tmp_path) == ["g_1.png", "g_2.png"]
    assert all(path.read_bytes() == data for path, data in blobs.items())


def test_a_forced_batch_on_a_file_system_without_hard_links_copies_the_old_files_aside(tmp_path, monkeypatch):
    (tmp_path / "g_1.png").write_bytes(b"old")
    monkeypatch.setattr(files.os, "link", failing_on_call(1, os.link, OSError(errno.EPERM, "Operation not permitted")))
    monkeypatch.setattr(files.os, "replace", failing_on_call(2, os.replace, OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError, match="I/O error"):
        files.atomic_write_many({tmp_path / "g_1.png": b"new", tmp_path / "g_2.png": b"new"}, overwrite=True)
    assert names(tmp_path) == ["g_1.png"] and (tmp_path / "g_1.png").read_bytes() == b"old"
