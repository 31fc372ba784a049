"""Timing: the device under test, medians of alternating runs, the two floors a row is measured
against (one large GEMM, one large copy), and kernel counts from PyTorch's profiler.

PyTorch, where it appears here, is a companion for the comparison, never a minidiff dependency:
it is imported inside the functions that need it.
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import time

import numpy as np

from .. import backend


# -- the device: array module, synchronisation, and PyTorch's matching device ---------------------
@dataclasses.dataclass
class Device:
    name: str                       # "cpu" | "gpu"
    xp: object                      # numpy | cupy

    @classmethod
    def select(cls, name):
        name = backend.set_device(name)
        return cls(name, backend.get_xp())

    def sync(self):
        backend.synchronize()

    def put(self, host_array):
        return backend.to_device(host_array, self.name)

    @property
    def torch_device(self):
        return "cuda" if self.name == "gpu" else "cpu"

    def describe(self):
        if self.name == "gpu":
            properties = self.xp.cuda.runtime.getDeviceProperties(self.xp.cuda.Device().id)
            return properties["name"].decode() if isinstance(properties["name"], bytes) else str(properties["name"])
        return f"CPU, {os.cpu_count()} cores"


def torch_for(device: Device, wanted: bool):
    """PyTorch when it imports and can use ``device`` (None otherwise), with the reason for None."""
    if not wanted:
        return None, "--no-torch"
    try:
        import torch  # noqa: PLC0415  (a benchmark companion, never a minidiff dependency)
    except ImportError:
        return None, "PyTorch is not installed"
    if device.name == "gpu" and not torch.cuda.is_available():
        return None, "PyTorch sees no CUDA device"
    if device.name == "cpu" and os.environ.get("OPENBLAS_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OPENBLAS_NUM_THREADS"]))    # same threads for both
    return torch, None


def torch_sync(torch, device: Device):
    if device.name == "gpu":
        torch.cuda.synchronize()


# -- timing --------------------------------------------------------------------------------------
def median_seconds(fn, sync, repeats, warmup):
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs, synchronised."""
    return alternating_medians([(fn, sync)], repeats, warmup)[0][0]


def alternating_medians(runs, repeats, warmup):
    """For each ``(fn, sync)`` in ``runs``: (median wall time, median CPU time of this process, all
    its threads) over ``repeats`` timed runs, after ``warmup`` untimed runs of each. The timed
    runs go round robin (A B A B ...), so a slow spell of a shared machine hits every entry alike.
    CPU time is what the work cost, however long other programs kept it waiting."""
    for fn, sync in runs:
        for _ in range(warmup):
            fn()
        sync()
    times = [[] for _ in runs]
    cpu_times = [[] for _ in runs]
    for _ in range(repeats):
        for (fn, sync), wall, cpu in zip(runs, times, cpu_times):
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            sync()
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - cpu_start)
    return [(statistics.median(wall), statistics.median(cpu)) for wall, cpu in zip(times, cpu_times)]


def calibrate(device: Device):
    """Rates of the two floors: one large float32 GEMM (FLOP/s) and one large copy (bytes/s)."""
    xp = device.xp
    n = 4096 if device.name == "gpu" else 1024
    rng = np.random.default_rng(0)
    a = device.put(rng.standard_normal((n, n), dtype=np.float32))
    gemm_s = median_seconds(lambda: a @ a, device.sync, repeats=5, warmup=2)
    src = xp.ones(64 * 2 ** 20 if device.name == "gpu" else 16 * 2 ** 20, dtype=np.float32)
    dst = xp.empty_like(src)
    copy_s = median_seconds(lambda: xp.copyto(dst, src), device.sync, repeats=5, warmup=2)
    return {"gemm_flops_per_s": 2.0 * n ** 3 / gemm_s, "copy_bytes_per_s": 2.0 * src.nbytes / copy_s}


def count_cuda_kernels(torch, device: Device, fn):
    """CUDA kernels (and memsets/copies) launched by one ``fn()``, via PyTorch's CUPTI profiler,
    which records every kernel in the process, CuPy's included. None when it cannot."""
    if torch is None or device.name != "gpu":
        return None
    try:
        from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            device.sync()
            torch.cuda.synchronize()
        count = sum(1 for event in prof.events() if event.device_type == torch.autograd.DeviceType.CUDA)
    except Exception:                  # a profiler that is unavailable: leave the column empty
        return None
    return count or None
