"""A benchmark row: the work it times (:class:`Work`), and :func:`run_work`, which times it beside
PyTorch, counts its work and kernels, and says what limits it."""
from __future__ import annotations

import dataclasses

import numpy as np

from .counting import count_work, limit_of
from .timing import Device, alternating_medians, count_cuda_kernels, torch_sync


@dataclasses.dataclass
class Work:
    """One benchmark row: ``make(device, batch)`` and ``make_torch(torch, device, batch)`` build
    the inputs and return a function that runs the work once."""
    suite: str
    name: str
    shape: str
    batch: int
    make: object
    make_torch: object = None
    images: int = 0                # images made per run (sample suite), else 0


def host_normal(rng, shape, scale=1.0):
    """float32 N(0, scale^2) samples on the host (the same inputs for minidiff and PyTorch)."""
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def to_torch(torch, device: Device, host_array, grad=False):
    t = torch.from_numpy(np.ascontiguousarray(host_array)).to(device.torch_device)
    return t.requires_grad_(grad)


def run_work(work: Work, device: Device, torch, rates, repeats, warmup):
    """Time one row: minidiff and PyTorch (when available), runs alternating; count its work and kernels."""
    run = work.make(device, work.batch)
    runs = [(run, device.sync)]
    torch_run = None
    if torch is not None and work.make_torch is not None:
        torch_run = work.make_torch(torch, device, work.batch)
        runs.append((torch_run, lambda: torch_sync(torch, device)))
    timings = alternating_medians(runs, repeats, warmup)
    seconds, cpu_seconds = timings[0]
    macs, nbytes, calls = count_work(work.make, work.batch)
    row = {"suite": work.suite, "work": work.name, "shape": work.shape, "batch": work.batch,
           "minidiff_s": seconds, "torch_s": None, "ratio": None, "minidiff_cpu_s": cpu_seconds,
           "torch_cpu_s": None, "cpu_ratio": None,
           "gflop": 2 * macs / 1e9, "mbytes": nbytes / 1e6, "calls": calls,
           "kernels": count_cuda_kernels(torch, device, run), "torch_kernels": None}
    kind, math_share, memory_share = limit_of(seconds, 2 * macs, nbytes, rates, device)
    row.update(limit=kind, math_share=math_share, memory_share=memory_share)
    if work.images:
        row["images_per_s"] = work.images / seconds
        row["s_per_image"] = seconds / work.images
    if torch_run is not None:
        row["torch_s"], row["torch_cpu_s"] = timings[1]
        row["ratio"] = seconds / row["torch_s"]
        row["cpu_ratio"] = cpu_seconds / row["torch_cpu_s"]
        row["torch_kernels"] = count_cuda_kernels(torch, device, torch_run)
        if work.images:
            row["torch_images_per_s"] = work.images / row["torch_s"]
    del run
    return row
