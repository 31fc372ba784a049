"""The report: the printed table of rows, and the environment they were measured in (device,
library versions, threads, TF32 settings, the measured floors)."""
from __future__ import annotations

import os

import numpy as np

from .. import backend
from .timing import Device


def _format_seconds(s):
    if s is None:
        return "-"
    return f"{s:8.2f} s " if s >= 10 else f"{s * 1e3:8.2f} ms"


def format_table(rows):
    header = (f"{'work':<22} {'shape':<44} {'minidiff':>11} {'torch':>11} {'ratio':>6} {'cpu-time ratio':>14} "
              f"{'GFLOP':>8} {'MB':>8} {'limit (math%/mem%)':>24} {'calls':>6} {'kernels md/torch':>17}")
    lines = [header, "-" * len(header)]
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        cpu_ratio = "-" if r["cpu_ratio"] is None else f"{r['cpu_ratio']:.2f}"
        limit = f"{r['limit']} ({100 * r['math_share']:.0f}%/{100 * r['memory_share']:.0f}%)"
        kernels = "-" if r["kernels"] is None else f"{r['kernels']}/{r['torch_kernels'] or '-'}"
        lines.append(f"{r['work']:<22} {r['shape']:<44} {_format_seconds(r['minidiff_s']):>11} "
                     f"{_format_seconds(r['torch_s']):>11} {ratio:>6} {cpu_ratio:>14} {r['gflop']:8.2f} {r['mbytes']:8.1f} "
                     f"{limit:>24} {r['calls']:>6} {kernels:>17}")
        if "s_per_image" in r:
            torch_rate = r.get("torch_images_per_s")
            lines.append(f"{'':<22} -> {r['s_per_image']:.3f} s per image, {r['images_per_s']:.2f} images/s"
                         + ("" if torch_rate is None else f" (torch: {torch_rate:.2f} images/s)"))
    return "\n".join(lines)


def environment(device: Device, torch, why_no_torch, rates):
    env = {"device": device.name, "device_name": device.describe(),
           "fused_kernels": backend.fused_enabled(),
           "numpy": np.__version__, "torch": None if torch is None else torch.__version__,
           "torch_missing_because": why_no_torch, **rates}
    if device.name == "gpu":
        env["cupy"] = device.xp.__version__
        env["cupy_tf32"] = os.environ.get("CUPY_TF32", "0")
        if torch is not None:
            env["torch_conv_tf32"] = getattr(torch.backends.cudnn, "allow_tf32", None)
            env["torch_matmul_tf32"] = getattr(torch.backends.cuda.matmul, "allow_tf32", None)
    else:
        env["blas_threads"] = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or "default"
        if torch is not None:
            env["torch_threads"] = torch.get_num_threads()
    return env


def describe_environment(env):
    lines = [f"device: {env['device_name']} ({env['device']}), numpy {env['numpy']}, "
             f"torch {env['torch'] or 'absent: ' + str(env['torch_missing_because'])}"]
    if env["device"] == "gpu":
        lines.append(f"CuPy {env['cupy']}, CUPY_TF32={env['cupy_tf32']} (2-D GEMMs only), fused kernels "
                     f"{'on' if env['fused_kernels'] else 'off (MINIDIFF_FAST=0)'}; no cuDNN in CuPy")
        if env["torch"]:
            lines.append(f"torch: cuDNN conv TF32={env['torch_conv_tf32']}, matmul TF32={env['torch_matmul_tf32']}")
    else:
        lines.append(f"BLAS threads (OPENBLAS_NUM_THREADS): {env['blas_threads']}"
                     + (f", torch threads: {env['torch_threads']}" if env["torch"] else "")
                     + f"; fast routes {'on' if env['fused_kernels'] else 'off (MINIDIFF_FAST=0)'}")
    lines.append(f"floors: GEMM {env['gemm_flops_per_s'] / 1e9:.0f} GFLOP/s, copy "
                 f"{env['copy_bytes_per_s'] / 1e9:.0f} GB/s (measured now)")
    return "\n".join(lines)
