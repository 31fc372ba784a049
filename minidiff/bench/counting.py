"""Counting work: multiply-adds, bytes and op calls of one run, traced on the CPU.

A run is traced by wrapping every functional op (``minidiff.nn.functional.__all__``) and AdamW's
step for its duration. Only the outermost call counts (an op that calls another op is one call).

* multiply-adds: of every linear, conv and attention product, the backward's products included
  (x2 for FLOPs);
* bytes: every op's array inputs and outputs, each read or written once, as a perfectly fused
  implementation would (temporaries inside an op are not counted, so real traffic is higher).
"""
from __future__ import annotations

import contextlib
import dataclasses
import sys

import numpy as np

from .. import backend
from .timing import Device

_NOT_OPS = {"erf", "conv_output_size", "attention_probs"}         # in functional.__all__, not ops


def _arrays(values):
    """The ndarrays among ``values``, looking one level into tuples and lists (caches)."""
    for v in values:
        if isinstance(v, (tuple, list)):
            yield from (a for a in v if isinstance(a, np.ndarray))
        elif isinstance(v, np.ndarray):
            yield v


def _macs(name, args, out):
    """Multiply-adds of one call, from the shapes of its arguments and results."""
    if name == "linear":
        x, w = args[0], args[1]
        return x.size // w.shape[1] * w.shape[0] * w.shape[1]
    if name == "linear_backward":
        dx, dw = out[0], out[1]
        return 2 * dx.size * dw.shape[0]
    if name == "conv2d":
        w = args[1]
        return out[0].size * (w.size // w.shape[0])
    if name == "conv2d_backward":
        dw = out[1]
        return 2 * args[0].size * (dw.size // dw.shape[0])
    if name == "conv_transpose2d":
        x, w = args[0], args[1]
        return x.size * (w.size // w.shape[0])
    if name == "conv_transpose2d_backward":
        dx, dw = out[0], out[1]
        return 2 * dx.size * (dw.size // dw.shape[0])
    if name in ("attention", "attention_backward"):
        q, k, v = (args[0], args[1], args[2]) if name == "attention" else out
        rows = q.size // q.shape[-1]                              # B * heads * Lq
        forward = rows * k.shape[-2] * (q.shape[-1] + v.shape[-1])  # S = q k^T, O = P v
        return forward if name == "attention" else 2 * forward
    return 0


@dataclasses.dataclass
class Tally:
    macs: int = 0
    bytes: int = 0
    calls: int = 0


def _holders(originals):
    """Every place in minidiff that holds one of the functional ops, as {(owner, attribute): (name,
    value)}: a module's global (``functional.conv2d``, or a module that imported the function by
    name) or a class's staticmethod (``layers.SiLU.op = staticmethod(F.silu)``). A module not yet
    imported holds nothing that can run."""
    name_of = {id(fn): name for name, fn in originals.items()}
    holders = {}
    for module_name, module in list(sys.modules.items()):
        if module is None or not (module_name == "minidiff" or module_name.startswith("minidiff.")):
            continue
        for attr, value in list(vars(module).items()):
            if id(value) in name_of:
                holders[(module, attr)] = (name_of[id(value)], value)
            elif isinstance(value, type) and value.__module__ == module_name:
                for class_attr, held in vars(value).items():
                    if isinstance(held, staticmethod) and id(held.__func__) in name_of:
                        holders[(value, class_attr)] = (name_of[id(held.__func__)], held)
    return holders


@contextlib.contextmanager
def traced(tally: Tally):
    """Count every functional op called inside (outermost calls only) and every AdamW update."""
    from .. import optim  # noqa: PLC0415
    from ..nn import functional as F  # noqa: PLC0415
    originals = {name: getattr(F, name) for name in F.__all__ if name not in _NOT_OPS}
    depth = [0]

    def wrap(name, fn):
        def counted(*args, **kwargs):
            depth[0] += 1
            try:
                out = fn(*args, **kwargs)
            finally:
                depth[0] -= 1
            if depth[0] == 0:
                results = out if isinstance(out, tuple) else (out,)
                if not name.endswith("_backward"):
                    results = results[:1]                         # the output, not the cache
                tally.calls += 1
                tally.macs += _macs(name, args, results)
                tally.bytes += sum(a.nbytes for a in _arrays(list(args) + list(results)))
            return out
        return counted

    original_step = optim.AdamW.step

    def counted_step(self, *args, **kwargs):
        # theta, m, v read and written, g read: 7 arrays per parameter
        tally.calls += 1
        tally.bytes += 7 * sum(p.data.nbytes for _, p in self.named if p.grad is not None)
        return original_step(self, *args, **kwargs)

    wrapped = {name: wrap(name, fn) for name, fn in originals.items()}
    holders = _holders(originals)
    for (owner, attr), (name, held) in holders.items():
        setattr(owner, attr, staticmethod(wrapped[name]) if isinstance(held, staticmethod) else wrapped[name])
    optim.AdamW.step = counted_step
    try:
        yield tally
    finally:
        for (owner, attr), (_, held) in holders.items():
            setattr(owner, attr, held)
        optim.AdamW.step = original_step


def count_work(make, batch):
    """(MACs, bytes, calls) of one run of ``make(cpu, batch)``: traced at batch 1 and 2 on the CPU
    and extended linearly (every count is affine in the batch: weights are read once per call)."""
    tallies = []
    with backend.using("cpu"):
        cpu = Device("cpu", np)
        for b in (1, 2):
            run = make(cpu, b)
            with traced(Tally()) as tally:
                run()
            tallies.append(tally)
    one, two = tallies
    return tuple(getattr(one, f) + (batch - 1) * (getattr(two, f) - getattr(one, f))
                 for f in ("macs", "bytes", "calls"))


def limit_of(seconds, flops, nbytes, rates, device: Device):
    """"compute" | "memory" | "launch"/"overhead", and each floor's share of the measured time.

    ``math`` = FLOPs at the rate of one large GEMM on this device, ``memory`` = bytes at the rate of
    one large copy; a row is compute-bound when math takes >= 50% of the measured time,
    memory-bound when traffic does, else launch-bound (GPU) or overhead-bound (CPU)."""
    math_share = flops / rates["gemm_flops_per_s"] / seconds
    memory_share = nbytes / rates["copy_bytes_per_s"] / seconds
    if math_share >= 0.5:
        kind = "compute"
    elif memory_share >= 0.5:
        kind = "memory"
    else:
        kind = "launch" if device.name == "gpu" else "overhead"
    return kind, math_share, memory_share
