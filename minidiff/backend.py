"""The array backend: NumPy on the CPU, CuPy on an NVIDIA GPU.

This is the only file in minidiff that imports CuPy. Every op takes its array module from its
data, so one function runs on either device:

    xp = get_array_module(x)        # numpy or cupy, whichever holds x
    y = xp.maximum(x, 0)

Choosing the device
-------------------
* ``MINIDIFF_DEVICE=cpu|gpu|auto`` in the environment, or ``--device`` on every script
  (which calls :func:`set_device`). ``auto`` (the default) means the GPU when CuPy imports and
  sees a CUDA device, else the CPU.
* Asking for ``gpu`` where there is none is an error, never a silent fall back to the CPU.

Randomness
----------
``rng(seed)`` returns a generator for the current device. The same seed on the same device gives
the same numbers, but NumPy's and CuPy's streams differ: a seed does *not* give the same image on
CPU and GPU. Tests that compare the two draw on the host and copy to the device.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np

_VALID = ("cpu", "gpu", "auto")
_cupy = None          # the cupy module once imported successfully
_cupy_error = None    # why it could not be used, for the error message
_device = None        # "cpu" or "gpu", resolved lazily


def _try_cupy():
    """Import CuPy and check that a CUDA device answers; remember why not if it fails."""
    global _cupy, _cupy_error
    if _cupy is not None or _cupy_error is not None:
        return _cupy
    try:
        import cupy  # noqa: PLC0415  (the one place CuPy is imported)
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("CuPy sees no CUDA device")
        _cupy = cupy
    except Exception as exc:  # ImportError, CUDA driver errors, ...
        _cupy_error = f"{type(exc).__name__}: {exc}"
    return _cupy


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    return _try_cupy() is not None


def set_device(name: str | None = None) -> str:
    """Select ``cpu``, ``gpu`` or ``auto`` (``None`` reads ``MINIDIFF_DEVICE``). Returns the device."""
    global _device, xp
    name = (name or os.environ.get("MINIDIFF_DEVICE") or "auto").lower()
    if name not in _VALID:
        raise ValueError(f"device must be one of {_VALID}, got {name!r}")
    if name == "gpu" and not gpu_available():
        raise RuntimeError(
            "device 'gpu' was requested but no GPU backend is usable "
            f"({_cupy_error}). Install CuPy (pip install -r requirements-gpu.txt) on a machine "
            "with an NVIDIA GPU, or use --device cpu.")
    if name == "auto":
        name = "gpu" if gpu_available() else "cpu"
    _device = name
    xp = _cupy if name == "gpu" else np
    return _device


@contextlib.contextmanager
def using(name: str | None):
    """``with using("gpu"): ...`` runs a block on a device and puts the caller's device back after
    it (``None``: the current device, nothing changes). Library functions that take a ``device``
    argument use this, so they never switch the process-wide device behind the caller's back."""
    if name is None:
        yield device()
        return
    previous = _device
    try:
        yield set_device(name)
    finally:
        if previous is None:
            globals()["_device"] = None
        else:
            set_device(previous)


def device() -> str:
    """The device in use: ``"cpu"`` or ``"gpu"``."""
    if _device is None:
        set_device()
    return _device


def get_xp():
    """The array module of the current device (numpy or cupy)."""
    device()
    return xp


def get_array_module(*arrays):
    """numpy or cupy, whichever holds the given arrays (numpy for plain Python numbers)."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def is_gpu_array(x) -> bool:
    return _cupy is not None and isinstance(x, _cupy.ndarray)


def to_numpy(x):
    """Any array (NumPy or CuPy) or scalar as a NumPy array on the host."""
    if is_gpu_array(x):
        return _cupy.asnumpy(x)
    return np.asarray(x)


def to_device(x, dev: str | None = None):
    """Copy an array to ``dev`` (``"cpu"``/``"gpu"``; default: the current device)."""
    dev = dev or device()
    if dev == "cpu":
        return to_numpy(x)
    if dev == "gpu":
        if not gpu_available():
            set_device("gpu")  # raises the clear error
        return _cupy.asarray(x)
    raise ValueError(f"device must be 'cpu' or 'gpu', got {dev!r}")


def rng(seed=None, dev: str | None = None):
    """A random generator for ``dev`` (default: the current device).

    NumPy: ``numpy.random.default_rng(seed)``; CuPy: ``cupy.random.default_rng(seed)``.
    Both offer ``standard_normal``, ``random``, ``integers``, ``permutation``.
    """
    dev = dev or device()
    if dev == "gpu":
        if not gpu_available():
            set_device("gpu")
        return _cupy.random.default_rng(seed)
    return np.random.default_rng(seed)


def address(x) -> int:
    """The memory address of x's first element (host or device): where a view sits in its buffer."""
    return x.data.ptr if is_gpu_array(x) else x.ctypes.data


def synchronize():
    """Wait for the GPU to finish queued work (no-op on the CPU); for timing only."""
    if _cupy is not None and _device == "gpu":
        _cupy.cuda.Stream.null.synchronize()


# -- the fast routes (minidiff/nn/fast/) ------------------------------------------------------------
# On by default. MINIDIFF_FAST=0 in the environment (or set_fast(False)) makes every op run its
# derivation, on the CPU and on the GPU: no thread blocks, no batch-last layouts, no fused CuPy
# kernels. MINIDIFF_FUSED is the switch's old name and is read when MINIDIFF_FAST is not set.
def _switch_from_environment() -> bool:
    setting = os.environ.get("MINIDIFF_FAST", os.environ.get("MINIDIFF_FUSED", "1"))
    return setting.strip().lower() not in ("0", "false", "no", "off")


_fast = _switch_from_environment()


def fast_enabled() -> bool:
    """Whether ops may take their fast routes (minidiff/nn/fast/)."""
    return _fast


def set_fast(enabled: bool) -> bool:
    """Turn the fast routes on or off; returns the previous setting."""
    global _fast
    previous, _fast = _fast, bool(enabled)
    return previous


def fused_enabled() -> bool:
    """The old name of fast_enabled (the fused CuPy kernels are one of the fast routes)."""
    return fast_enabled()


def set_fused(enabled: bool) -> bool:
    """The old name of set_fast."""
    return set_fast(enabled)


def use_fused(x) -> bool:
    """True when ``x`` is a float32/float64 CuPy array and the fast routes are on: the test every
    fused-kernel branch makes."""
    return _fast and is_gpu_array(x) and x.dtype.char in "fd"


def cupy_module():
    """The cupy module (None without a usable GPU): for minidiff/nn/fast/kernels.py, which builds its
    kernels with it, so that this file stays the only one that imports CuPy."""
    return _try_cupy()


def add_device_argument(parser):
    """Add the standard ``--device cpu|gpu|auto`` flag to an argparse parser."""
    parser.add_argument("--device", choices=_VALID, default=None,
                        help="cpu, gpu or auto (default: $MINIDIFF_DEVICE or auto)")
    return parser


xp = np  # replaced by set_device(); ops should use get_array_module(x) instead


if __name__ == "__main__":
    print("device:", device(), "| array module:", get_xp().__name__,
          "| GPU usable:", gpu_available(), "" if gpu_available() else f"({_cupy_error})")
