"""Elementwise chains on every CPU core, one cache-sized block of rows at a time (the host's engine
for the fast routes; it was minidiff/nn/host.py, a name that still imports).

NumPy runs each ufunc on one core, from start to end of the array. An op such as GELU is a chain
of ~25 of them, so on the host it reads and writes its whole input from main memory ~25 times
while the other cores idle (BLAS is the only part of NumPy that uses them). ``map_rows`` cuts
the arrays along their first axis into blocks of about ``BLOCK`` numbers (512 kB of float32,
which stays in a core's cache) and runs the whole chain on one block at a time, the blocks
shared among a few threads. That works because NumPy lets go of Python's global lock inside
every ufunc loop, so the threads really run at once.

Nothing changes in the numbers: each row's results come from the same operations in the same
order, whichever thread computes them. CuPy arrays and small arrays take the plain call,
``fn(*arrays)``; so does a call made from inside a block (GELU's blocks call normal_cdf).

The number of threads is the number of cores this process may use; ``MINIDIFF_THREADS=1`` (or
``set_threads(1)``) turns the pool off.

Two process-wide settings make the host path faster:

* Memory (made when this module is imported). A training step allocates and frees hundreds of
  arrays of 0.1-30 MB. glibc serves those over 128 kB with fresh ``mmap`` pages and hands freed
  memory straight back to the operating system, so every step the kernel zeroes the same pages
  again (a page fault per 4 kB: 8-10% of a latent U-Net step here). ``keep_freed_memory`` asks
  glibc (``mallopt``) to keep arrays up to 32 MB on its heap and freed memory for reuse; the
  process's memory then stays near its peak instead of shrinking between steps.
  ``MINIDIFF_KEEP_MEMORY=0`` (or any ``MALLOC_*`` variable of your own) leaves glibc's defaults.
* OpenBLAS's spinning (set in ``minidiff/__init__.py``). After a matrix product OpenBLAS keeps
  its worker threads spinning for 2^28 cycles (~0.1 s) by default, and a spinning worker holds
  the core our second thread needs. ``OPENBLAS_THREAD_TIMEOUT=20`` (unless you set it) sends them
  to sleep after 2^20 cycles (~0.4 ms, which still bridges back-to-back products; 2^14 was
  slower: the workers then fell asleep between products and took long to wake). OpenBLAS reads
  it once, when NumPy loads it. It only takes effect when minidiff is imported before NumPy;
  otherwise the blocks still give the same numbers, with less speed-up.
"""
from __future__ import annotations

import ctypes
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

BLOCK = 1 << 17                   # numbers per block (512 kB of float32)


def _cores() -> int:
    """MINIDIFF_THREADS if set, else the cores this process may run on."""
    setting = os.environ.get("MINIDIFF_THREADS", "").strip()
    if setting:
        try:
            return max(1, int(setting))
        except ValueError:
            raise ValueError(f"MINIDIFF_THREADS must be a whole number of threads, got {setting!r}") from None
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                                   # not on Linux
        return os.cpu_count() or 1


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse (see the module docstring). Returns whether
    the settings were made: only on Linux with glibc, and not when the environment opts out."""
    if (not sys.platform.startswith("linux") or os.environ.get("MINIDIFF_KEEP_MEMORY", "1") == "0"
            or any(name.startswith("MALLOC_") for name in os.environ)):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):                        # another C library (musl, macOS)
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)          # arrays up to 32 MB from the heap
                and mallopt(M_TRIM_THRESHOLD, 1 << 30)        # give back only beyond 1 GB free at the top
                and mallopt(M_TOP_PAD, 64 << 20))             # grow the heap 64 MB at a time


_kept_memory = keep_freed_memory()
_threads: int | None = None      # read from the environment at first use (a bad value then
                                  # fails inside the command, as one clear error, not at import)
_pool: ThreadPoolExecutor | None = None
_in_block = threading.local()     # .active is True while this thread runs a block


def _forget_pool_after_fork():
    """A forked child inherits the pool object but none of its threads: start a fresh one."""
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def threads() -> int:
    """How many threads map_rows uses (this one included)."""
    global _threads
    if _threads is None:
        _threads = _cores()
    return _threads


def set_threads(n: int) -> int:
    """Use n threads from now on (1: everything on the calling thread). Returns the previous count."""
    global _threads, _pool
    if int(n) < 1:
        raise ValueError(f"set_threads: need at least 1 thread, got {n}")
    previous, _threads = threads(), int(n)
    if _pool is not None:
        _pool.shutdown(wait=True)
        _pool = None
    return previous


def for_blocks(fn, rows, output, parts=None):
    """Call ``fn(block)`` for slices ``block`` that together cover ``range(rows)``, spread over the
    threads; fn writes its results into ``output`` (an array the caller made) or others like it.
    ``parts``: how many slices (default: one per thread, right for plain copies; map_rows asks
    for cache-sized ones). For a CuPy output, a small one (under 2 * BLOCK numbers: a thread
    hand-off would cost more than it saves), one thread, or a call from inside a block it is
    simply ``fn(slice(0, rows))``.
    """
    if (threads() == 1 or rows < 2 or not isinstance(output, np.ndarray) or output.size < 2 * BLOCK
            or getattr(_in_block, "active", False)):
        fn(slice(0, rows))
        return
    parts = min(max(parts or _threads, _threads), rows)        # at least one per thread, none empty
    bounds = [round(rows * i / parts) for i in range(parts + 1)]
    blocks = [slice(start, stop) for start, stop in zip(bounds[:-1], bounds[1:])]
    share = -(-len(blocks) // _threads)                       # ceil: blocks per thread

    def run(my_blocks):
        _in_block.active = True
        try:
            for block in my_blocks:
                fn(block)
        finally:
            _in_block.active = False

    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=_threads - 1, thread_name_prefix="minidiff-host")
    others = [_pool.submit(run, blocks[i:i + share]) for i in range(share, len(blocks), share)]
    run(blocks[:share])
    for job in others:
        job.result()                                          # re-raises a block's exception


def map_rows(fn, *arrays):
    """``fn(*arrays)``, computed block by block along axis 0 on the host's cores.

    fn must treat rows (entries along axis 0) independently and return an array, or a tuple of
    arrays, whose axis 0 matches its inputs' (the block's rows). All arrays share that axis 0.
    Row 0 runs first, here: its results fix the outputs' shapes and dtypes. Rows 1.. then go in
    blocks of about BLOCK numbers to for_blocks, each block's results copied into the outputs.
    """
    first = arrays[0]
    rows = first.shape[0] if first.ndim else 0
    if (threads() == 1 or not isinstance(first, np.ndarray) or first.size < 2 * BLOCK or rows < 2
            or getattr(_in_block, "active", False)):
        return fn(*arrays)
    row_0 = fn(*(a[:1] for a in arrays))                       # fixes the outputs' shapes and dtypes
    single = not isinstance(row_0, tuple)
    row_0 = (row_0,) if single else row_0
    outputs = tuple(np.empty((rows,) + r.shape[1:], dtype=r.dtype) for r in row_0)
    for out, result in zip(outputs, row_0):
        out[:1] = result

    def block(rows_here):
        results = fn(*(a[1:][rows_here] for a in arrays))
        for out, result in zip(outputs, (results,) if single else results):
            out[1:][rows_here] = result

    for_blocks(block, rows - 1, outputs[0], parts=-(-first.size // BLOCK))
    return outputs[0] if single else outputs
