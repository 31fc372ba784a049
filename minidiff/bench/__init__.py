"""Timing tables: how fast minidiff runs, beside PyTorch doing the same work on the same device.

    python -m minidiff bench [ops|unet|sample|all] [--device cpu|gpu] [--json FILE]
                             [--batch N] [--repeats N] [--tiny] [--check] [--no-torch]
    python -m minidiff.bench ...                       (the same)

Suites
------
ops     single ops, forward + backward: conv2d (B=64, 64->64 channels, 32x32, 3x3), group_norm
        (B=64, C=128, 16x16, 32 groups), attention (B=64, 4 heads, L=256, d=32), linear, SiLU,
        GELU, softmax, and one AdamW update of the latent8 U-Net's parameters (gradients arrive
        through backward's accumulate, as in training: on a GPU that is the flat one-kernel update).
unet    one training step (forward, MSE loss, backward, AdamW) of the shipped text-to-image U-Net
        (UNetConfig.latent8: 4x8x8 latents, a 24 x 128 text context) at batch 128, and of the
        32x32 pixel U-Net (UNetConfig.pixel32) at batch 64.
sample  text-to-image: the text encoder, 50 DDIM steps with classifier-free guidance (2B latents
        through the U-Net each step) and the VAE decode; batch 1 on the CPU, 64 on the GPU.

How to read a row
-----------------
* ``minidiff`` / ``torch``: the median of ``--repeats`` timed runs after warm-up runs; on the GPU
  every run ends with a device synchronisation, so the time is wall-clock work, host overhead
  included. ``ratio`` = minidiff / torch (below 1: minidiff is faster); ``cpu-time ratio`` is the
  same for the CPU time the process used (all threads): on a shared, busy machine it is the
  steadier figure, since waiting for other programs costs no CPU time. The torch column needs
  PyTorch (the U-Net, text-encoder and VAE twins are minidiff.bench.twins, which import torch only
  when used); without it the column stays empty. PyTorch convolutions use cuDNN; minidiff's are im2col + GEMM.
  After the warm-up runs the timed runs alternate (minidiff, PyTorch, minidiff, ...), so a busy
  spell of a shared machine hits both columns alike. That is fair only because minidiff tells
  OpenBLAS to put its worker threads to sleep soon after a matrix product
  (``OPENBLAS_THREAD_TIMEOUT``, see minidiff/__init__.py): with OpenBLAS's default ~0.1 s of
  spinning, a PyTorch CPU step right after a minidiff one ran ~25% slower. (Checked: PyTorch's
  step time alone and right after a minidiff step now agree within the run-to-run noise.)
* ``GFLOP`` and ``MB``: work and ideal memory traffic of one run, counted while the same work runs
  once on the CPU: multiply-adds of every linear, conv and attention product (x2 for FLOPs, the
  backward's products included), and the bytes of every op's array inputs and outputs (each read
  or written once, as a perfectly fused implementation would; temporaries inside an op are not
  counted, so real traffic is higher).
* ``limit``: which of three floors is closest to the measured time. ``math`` = FLOPs at the rate
  of one large GEMM on this device, ``memory`` = bytes at the rate of one large copy (both
  measured at start-up, below the table), the rest is per-call cost: kernel launches and host
  overhead on the GPU, Python and small-array overhead on the CPU. A row is "compute-bound" when
  math takes >= 50% of the measured time, "memory-bound" when traffic does, else "launch-bound"
  (GPU) or "overhead-bound" (CPU); the percentages say how close each floor is.
* ``calls``: minidiff functional ops per run (each is one or more kernels); ``kernels``: CUDA
  kernels per run, counted with PyTorch's CUPTI profiler (which sees CuPy's kernels too), GPU only.
* TF32: CuPy uses TF32 only when ``CUPY_TF32=1`` (read at the first GEMM) and only for 2-D GEMMs;
  PyTorch by default uses TF32 in cuDNN convolutions and strict float32 in matmuls.
* ``MINIDIFF_FAST=0`` (old name ``MINIDIFF_FUSED=0``) turns minidiff's fast routes off (minidiff/
  nn/fast/: the CPU thread blocks and layouts, the fused CuPy kernels), so every op runs its
  derivation: run the benches twice to see what they buy. ``--check`` first compares every fused
  kernel with the plain code it replaces and prints the largest differences.

Modules
-------
timing.py    the device, medians of alternating runs, the two floors, kernel counts (profiler)
counting.py  multiply-adds, bytes and op calls of one run (traced), and which floor limits a row
work.py      a row (Work) and run_work, which times it beside PyTorch and counts it
ops.py, unet.py, sample.py   the three suites' rows
report.py    the printed table and the environment
checks.py    --check: the fused kernels against the plain code (also used by tests/test_kernels.py)
twins/       the PyTorch twins of the models (torch imported on first use)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import backend
from ..checks import positive_int
from ..files import atomic_write_bytes
from .checks import compare_fused, fused_cases, run_checks
from .counting import Tally, count_work, limit_of, traced
from .ops import ops_works
from .report import describe_environment, environment, format_table
from .sample import sample_work, sample_works
from .timing import (Device, alternating_medians, calibrate, count_cuda_kernels, median_seconds, torch_for,
                     torch_sync)
from .unet import unet_work, unet_works
from .work import Work, run_work

__all__ = ["SUITES", "Device", "Tally", "Work", "alternating_medians", "build_parser", "calibrate",
           "compare_fused", "count_cuda_kernels", "count_work", "describe_environment", "environment",
           "format_table", "fused_cases", "limit_of", "main", "median_seconds", "ops_works", "run_checks",
           "run_work", "sample_work", "sample_works", "torch_for", "torch_sync", "traced", "unet_work",
           "unet_works"]

SUITES = ("ops", "unet", "sample")


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m minidiff bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", nargs="?", default="all", choices=SUITES + ("all",),
                        help="what to time (default: all)")
    backend.add_device_argument(parser)
    parser.add_argument("--json", metavar="FILE", help="also write the rows and the environment to FILE")
    parser.add_argument("--batch", type=int, help="batch size for every row (default: each row's own)")
    parser.add_argument("--repeats", type=int, help="timed runs per row (default: 10 ops, 5 unet, 3 sample on "
                                                    "the CPU; 20/10/3 on the GPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 1 CPU, 3 GPU)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes and models (seconds; for tests)")
    parser.add_argument("--check", action="store_true", help="compare fused kernels with the plain code first")
    parser.add_argument("--no-torch", action="store_true", help="leave the PyTorch column out")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        for name, value in (("--batch", args.batch), ("--repeats", args.repeats)):
            if value is not None:
                positive_int("bench", name, value)
        device = Device.select(args.device)
    except (ValueError, RuntimeError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    torch, why_no_torch = torch_for(device, not args.no_torch)
    gpu = device.name == "gpu"
    report = {}
    exit_code = 0
    if args.check:
        if not gpu:
            print("--check compares the fused CuPy kernels and needs --device gpu; skipped")
        else:
            ok, report["check"] = run_checks()
            exit_code = 0 if ok else 1
    rates = calibrate(device)
    report["environment"] = env = environment(device, torch, why_no_torch, rates)
    print(describe_environment(env))
    warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    suites = SUITES if args.suite == "all" else (args.suite,)
    rows = []
    for suite in suites:
        if suite == "ops":
            works, repeats = ops_works(args.tiny, args.batch), (20 if gpu else 10)
        elif suite == "unet":
            works, repeats = unet_works(args.tiny, args.batch), (10 if gpu else 5)
        else:
            works, repeats = sample_works(args.tiny, device, args.batch), 3
        repeats = args.repeats or repeats
        print(f"\n== {suite} ({repeats} timed runs after {warmup} warm-up) ==")
        suite_rows = [run_work(work, device, torch, rates, repeats, warmup) for work in works]
        print(format_table(suite_rows))
        rows += suite_rows
    report["rows"] = rows
    if args.json:
        atomic_write_bytes(Path(args.json), json.dumps(report, indent=1).encode())
        print(f"\nwrote {args.json}")
    return exit_code
