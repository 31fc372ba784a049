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
  PyTorch (the U-Net and text-encoder twins come from the repository's ``tests/torch_twins.py``);
  without it the column stays empty. PyTorch convolutions use cuDNN; minidiff's are im2col + GEMM.
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
* ``MINIDIFF_FUSED=0`` turns minidiff's fused CuPy kernels (minidiff/nn/kernels.py) off: run
  the GPU benches twice to see what they buy. ``--check`` first compares every fused kernel with
  the plain NumPy-style code it replaces and prints the largest differences.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from . import backend

SUITES = ("ops", "unet", "sample")
_TESTS_DIR = Path(__file__).resolve().parents[1] / "tests"      # tests/torch_twins.py lives there


# ================================================================================================
# the device: array module, synchronisation, and PyTorch's matching device
# ================================================================================================
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


def _torch(device: Device, wanted: bool):
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


def _twins():
    """tests/torch_twins.py (PyTorch twins of the models), imported from the repository."""
    if str(_TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(_TESTS_DIR))
    import torch_twins  # noqa: PLC0415
    return torch_twins


def _torch_sync(torch, device: Device):
    if device.name == "gpu":
        torch.cuda.synchronize()


# ================================================================================================
# timing
# ================================================================================================
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


# ================================================================================================
# counting work: multiply-adds, bytes and op calls of one run (traced on the CPU)
# ================================================================================================
_NOT_OPS = {"erf", "conv_output_size", "attention_probs"}


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


@contextlib.contextmanager
def traced(tally: Tally):
    """Count every functional op called inside (outermost calls only) and every AdamW update."""
    from . import optim  # noqa: PLC0415
    from .nn import functional as F  # noqa: PLC0415
    from .nn import layers  # noqa: PLC0415
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
    # layers that hold a functional pair as class attributes (staticmethod(F.silu) ...) get it too
    names = {id(fn): name for name, fn in originals.items()}
    held = [(cls, attr, value) for cls in vars(layers).values() if isinstance(cls, type)
            for attr, value in vars(cls).items()
            if isinstance(value, staticmethod) and id(value.__func__) in names]
    for name, fn in wrapped.items():
        setattr(F, name, fn)
    for cls, attr, value in held:
        setattr(cls, attr, staticmethod(wrapped[names[id(value.__func__)]]))
    optim.AdamW.step = counted_step
    try:
        yield tally
    finally:
        for name, fn in originals.items():
            setattr(F, name, fn)
        for cls, attr, value in held:
            setattr(cls, attr, value)
        optim.AdamW.step = original_step


def count_work(make, batch):
    """(MACs, bytes, calls) of one run of ``make(cpu, batch)``: traced at batch 1 and 2 on the CPU
    and extended linearly (every count is affine in the batch: weights are read once per call)."""
    previous = backend.device()
    cpu = Device.select("cpu")
    try:
        tallies = []
        for b in (1, 2):
            run = make(cpu, b)
            with traced(Tally()) as tally:
                run()
            tallies.append(tally)
    finally:
        backend.set_device(previous)
    one, two = tallies
    return tuple(getattr(one, f) + (batch - 1) * (getattr(two, f) - getattr(one, f))
                 for f in ("macs", "bytes", "calls"))


def limit_of(seconds, flops, nbytes, rates, device: Device):
    """"compute" | "memory" | "launch"/"overhead", and each floor's share of the measured time."""
    math_share = flops / rates["gemm_flops_per_s"] / seconds
    memory_share = nbytes / rates["copy_bytes_per_s"] / seconds
    if math_share >= 0.5:
        kind = "compute"
    elif memory_share >= 0.5:
        kind = "memory"
    else:
        kind = "launch" if device.name == "gpu" else "overhead"
    return kind, math_share, memory_share


# ================================================================================================
# the work: each returns a no-argument function that runs one timed unit on a device
# ================================================================================================
def _host_normal(rng, shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def _to_torch(torch, device: Device, host_array, grad=False):
    t = torch.from_numpy(np.ascontiguousarray(host_array)).to(device.torch_device)
    return t.requires_grad_(grad)


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


def _op_work(name, shape, batch, host_inputs, minidiff_fn, torch_fn):
    """An op benchmarked forward + backward: host_inputs(batch) -> list of arrays (the last one
    is the upstream gradient); minidiff_fn(*arrays) and torch_fn(torch, *tensors) run the op."""
    def make(device, b):
        arrays = [device.put(a) for a in host_inputs(b)]
        return lambda: minidiff_fn(*arrays)

    def make_torch(torch, device, b):
        host = host_inputs(b)
        tensors = [_to_torch(torch, device, a, grad=i < len(host) - 1) for i, a in enumerate(host)]
        return lambda: torch_fn(torch, *tensors)
    return Work("ops", name, shape, batch, make, make_torch)


def _grads(torch, out, inputs, d_out):
    return torch.autograd.grad(out, inputs, d_out)


def ops_works(tiny, batch=None):
    from .nn import functional as F  # noqa: PLC0415
    rng = np.random.default_rng(0)
    s = (lambda big, small: small if tiny else big)
    C, HW = s(64, 4), s(32, 6)
    Cg, HWg, G = s(128, 8), s(16, 4), s(32, 4)
    heads, L, d = s(4, 2), s(256, 8), s(32, 4)
    tokens, d_in, d_out = s(256, 4), s(128, 8), s(512, 16)
    B = batch or s(64, 2)

    def conv(x, w, b, dy):
        y, cache = F.conv2d(x, w, b, stride=1, padding=1)
        return F.conv2d_backward(dy, cache)

    def group_norm(x, gamma, beta, dy):
        y, cache = F.group_norm(x, gamma, beta, G)
        return F.group_norm_backward(dy, cache)

    def attention(q, k, v, dy):
        y, cache = F.attention(q, k, v)
        return F.attention_backward(dy, cache)

    def linear(x, w, b, dy):
        y, cache = F.linear(x, w, b)
        return F.linear_backward(dy, cache)

    def unary(name):
        def run(x, dy):                    # looked up at call time, so that count_work sees the call
            y, cache = getattr(F, name)(x)
            return getattr(F, f"{name}_backward")(dy, cache)
        return run

    activation_shape = (lambda b: (b, Cg, HWg, HWg))
    works = [
        _op_work("conv2d fwd+bwd", f"B={B} C={C}->{C} {HW}x{HW} k=3", B,
                 lambda b: [_host_normal(rng, (b, C, HW, HW)), _host_normal(rng, (C, C, 3, 3), 0.05),
                            _host_normal(rng, (C,)), _host_normal(rng, (b, C, HW, HW))],
                 conv, lambda torch, x, w, b, dy: _grads(
                     torch, torch.nn.functional.conv2d(x, w, b, padding=1), (x, w, b), dy)),
        _op_work("group_norm fwd+bwd", f"B={B} C={Cg} {HWg}x{HWg} G={G}", B,
                 lambda b: [_host_normal(rng, activation_shape(b)), 1 + _host_normal(rng, (Cg,), 0.1),
                            _host_normal(rng, (Cg,), 0.1), _host_normal(rng, activation_shape(b))],
                 group_norm, lambda torch, x, g, be, dy: _grads(
                     torch, torch.nn.functional.group_norm(x, G, g, be), (x, g, be), dy)),
        _op_work("attention fwd+bwd", f"B={B} h={heads} L={L} d={d}", B,
                 lambda b: [_host_normal(rng, (b, heads, L, d)) for _ in range(4)],
                 attention, lambda torch, q, k, v, dy: _grads(
                     torch, torch.nn.functional.scaled_dot_product_attention(q, k, v), (q, k, v), dy)),
        _op_work("linear fwd+bwd", f"{B}x{tokens} tokens {d_in}->{d_out}", B,
                 lambda b: [_host_normal(rng, (b * tokens, d_in)), _host_normal(rng, (d_out, d_in), 0.05),
                            _host_normal(rng, (d_out,)), _host_normal(rng, (b * tokens, d_out))],
                 linear, lambda torch, x, w, b, dy: _grads(
                     torch, torch.nn.functional.linear(x, w, b), (x, w, b), dy)),
        _op_work("silu fwd+bwd", f"B={B} C={Cg} {HWg}x{HWg}", B,
                 lambda b: [_host_normal(rng, activation_shape(b)) for _ in range(2)],
                 unary("silu"), lambda torch, x, dy: _grads(
                     torch, torch.nn.functional.silu(x), (x,), dy)),
        _op_work("gelu fwd+bwd", f"{B}x{tokens} tokens x {d_out}", B,
                 lambda b: [_host_normal(rng, (b * tokens, d_out)) for _ in range(2)],
                 unary("gelu"), lambda torch, x, dy: _grads(
                     torch, torch.nn.functional.gelu(x), (x,), dy)),
        _op_work("softmax fwd+bwd", f"B={B} h={heads} {L}x{L}", B,
                 lambda b: [_host_normal(rng, (b, heads, L, L)) for _ in range(2)],
                 unary("softmax"), lambda torch, x, dy: _grads(
                     torch, torch.softmax(x, dim=-1), (x,), dy)),
    ]
    works.append(_adamw_work(tiny))
    return works


def _adamw_work(tiny):
    """One AdamW update of every parameter of the latent8 U-Net (tiny: the tiny U-Net)."""
    from .models.unet import UNet, UNetConfig  # noqa: PLC0415
    from .optim import AdamW  # noqa: PLC0415
    config = UNetConfig.tiny() if tiny else UNetConfig.latent8()
    shapes = [p.data.shape for p in UNet(config).parameters()]
    rng = np.random.default_rng(0)
    host = [(_host_normal(rng, s), _host_normal(rng, s, 1e-3)) for s in shapes]

    def make(device, b):
        from .nn.module import Parameter  # noqa: PLC0415
        params = [Parameter(device.put(data)) for data, _ in host]
        optimizer = AdamW(params, lr=1e-4)
        for _ in range(2):              # as in training: gradients arrive through backward's accumulate,
            optimizer.zero_grad()       # which after the first step fills AdamW's flat buffer (on a GPU)
            for p, (_, grad) in zip(params, host):
                p.accumulate(device.put(grad))
            optimizer.step()
        return lambda: optimizer.step()

    def make_torch(torch, device, b):
        params = []
        for data, grad in host:
            p = torch.nn.Parameter(_to_torch(torch, device, data))
            p.grad = _to_torch(torch, device, grad)
            params.append(p)
        return torch.optim.AdamW(params, lr=1e-4).step
    n = sum(int(np.prod(s)) for s in shapes)
    return Work("ops", "AdamW step", f"{len(shapes)} tensors, {n / 1e6:.2f}M params", 1,
                make, make_torch)


# -- the U-Net training step ------------------------------------------------------------------
def _unet_inputs(config, batch, context_length, seed=0):
    rng = np.random.default_rng(seed)
    size = config.image_size
    x = _host_normal(rng, (batch, config.in_channels, size, size))
    t = rng.integers(0, 1000, batch).astype(np.int64)
    noise = _host_normal(rng, (batch, config.out_channels, size, size))
    context = None
    if config.context_dim is not None:
        context = _host_normal(rng, (batch, context_length, config.context_dim))
    return x, t, context, noise


def unet_work(name, config, batch, context_length=24):
    from .models.unet import UNet  # noqa: PLC0415
    from .nn import functional as F  # noqa: PLC0415
    from .optim import AdamW  # noqa: PLC0415

    def make(device, b):
        model = UNet(config, seed=0).to(device.name).train()
        optimizer = AdamW(model, lr=1e-4)
        x, t, context, noise = (None if a is None else device.put(a)
                                for a in _unet_inputs(config, b, context_length))

        def step():
            model.zero_grad()
            eps = model(x, t, context)
            loss, cache = F.mse_loss(eps, noise)
            model.backward(F.mse_loss_backward(1.0, cache))
            optimizer.step()
        return step

    def make_torch(torch, device, b):
        twin = _twins().make_unet_twin(config, UNet(config, seed=0).state_dict(), dtype=torch.float32,
                                       device=device.torch_device).train()
        optimizer = torch.optim.AdamW(twin.parameters(), lr=1e-4)
        x, t, context, noise = (None if a is None else _to_torch(torch, device, a)
                                for a in _unet_inputs(config, b, context_length))
        t = t.to(torch.float32)

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(twin(x, t, context), noise)
            loss.backward()
            optimizer.step()
        return step
    shape = f"B={batch} {config.in_channels}x{config.image_size}x{config.image_size}"
    if config.context_dim is not None:
        shape += f" ctx {context_length}x{config.context_dim}"
    return Work("unet", f"{name} train step", shape, batch, make, make_torch)


def unet_works(tiny, batch=None):
    from .models.unet import UNetConfig  # noqa: PLC0415
    if tiny:
        return [unet_work("tiny", UNetConfig.tiny(), batch or 2, context_length=5)]
    return [unet_work("latent8", UNetConfig.latent8(), batch or 128),
            unet_work("pixel32", UNetConfig.pixel32(), batch or 64)]


# -- text-to-image sampling ------------------------------------------------------------------
def _sampling_models(tiny):
    """(UNetConfig, VAEConfig, TextEncoderConfig) of the text-to-image system (tiny: small ones)."""
    from .models.text_encoder import TextEncoderConfig  # noqa: PLC0415
    from .models.unet import UNetConfig  # noqa: PLC0415
    from .models.vae import VAEConfig  # noqa: PLC0415
    if not tiny:
        return UNetConfig.latent8(), VAEConfig.f4_32(), TextEncoderConfig.shipped()
    vae = VAEConfig.tiny()
    unet = dataclasses.replace(UNetConfig.tiny(), in_channels=vae.latent_channels,
                               out_channels=vae.latent_channels, image_size=vae.latent_size)
    text = TextEncoderConfig(vocab_size=32, max_length=8, width=unet.context_dim, num_layers=1, num_heads=2)
    return unet, vae, text


def _prompt_ids(text_config, batch, seed=1):
    """Random token ids and right-padded masks (B, L): stand-ins for a tokenised prompt."""
    rng = np.random.default_rng(seed)
    L = text_config.max_length
    ids = rng.integers(0, text_config.vocab_size, (batch, L)).astype(np.int64)
    lengths = rng.integers(2, L + 1, batch)
    mask = np.arange(L)[None, :] < lengths[:, None]
    return ids, mask


def sample_work(tiny, batch, steps, guidance_scale=4.0):
    from .diffusion import samplers  # noqa: PLC0415
    from .diffusion.schedule import NoiseSchedule  # noqa: PLC0415
    from .models.text_encoder import TextEncoder  # noqa: PLC0415
    from .models.unet import UNet  # noqa: PLC0415
    from .models.vae import AutoencoderKL  # noqa: PLC0415
    from .nn.module import no_grad  # noqa: PLC0415
    unet_config, vae_config, text_config = _sampling_models(tiny)
    schedule = NoiseSchedule.make("scaled_linear", num_steps=1000)
    latent_shape = (unet_config.in_channels, unet_config.image_size, unet_config.image_size)

    def make(device, b):
        unet = UNet(unet_config, seed=0).to(device.name).eval()
        vae = AutoencoderKL(vae_config, seed=0).to(device.name).eval()
        text_encoder = TextEncoder(text_config, seed=0).to(device.name).eval()
        ids, mask = (device.put(a) for a in _prompt_ids(text_config, 2 * b))   # uncond + cond
        xp = device.xp

        def generate():
            with no_grad():
                context, _ = text_encoder(ids, mask)                        # (2B, L, width)

                def model_fn(z, t):
                    out = unet(xp.concatenate([z, z]), xp.concatenate([t, t]), context, mask)
                    eps_uncond, eps_cond = out[:b], out[b:]
                    return eps_uncond + np.float32(guidance_scale) * (eps_cond - eps_uncond)
                latents = samplers.sample(model_fn, schedule, (b,) + latent_shape, sampler="ddim",
                                          steps=steps, rng=backend.rng(0, device.name), progress=False)
                return vae.decode(latents)
        return generate

    def make_torch(torch, device, b):
        twins = _twins()
        kw = dict(dtype=torch.float32, device=device.torch_device)
        unet = twins.make_unet_twin(unet_config, UNet(unet_config, seed=0).state_dict(), **kw).eval()
        vae = twins.make_vae_twin(vae_config, AutoencoderKL(vae_config, seed=0).state_dict(), **kw).eval()
        text_encoder = twins.make_text_encoder_twin(text_config, TextEncoder(text_config, seed=0).state_dict(),
                                                    **kw).eval()
        ids, mask = (_to_torch(torch, device, a) for a in _prompt_ids(text_config, 2 * b))
        ts = [int(t) for t in samplers.timesteps(schedule, steps)]
        abar = [float(schedule.alphas_cumprod[t]) for t in ts] + [1.0]        # abar_t, then abar_prev

        @torch.no_grad()
        def generate():
            context, _ = text_encoder(ids, mask)
            z = torch.randn((b,) + latent_shape, device=device.torch_device)
            for i, t in enumerate(ts):
                tt = torch.full((2 * b,), float(t), device=device.torch_device)
                out = unet(torch.cat([z, z]), tt, context, mask)
                eps = out[:b] + guidance_scale * (out[b:] - out[:b])
                # DDIM (eta = 0): x0 = (z - sqrt(1 - abar) eps) / sqrt(abar); z' = sqrt(abar') x0 + sqrt(1 - abar') eps
                x0 = (z - math.sqrt(1 - abar[i]) * eps) / math.sqrt(abar[i])
                z = math.sqrt(abar[i + 1]) * x0 + math.sqrt(1 - abar[i + 1]) * eps
            return vae.decode(z)
        return generate
    shape = f"B={batch} ({2 * batch} through the U-Net), {steps} DDIM steps, CFG"
    return Work("sample", "text-to-image", shape, batch, make, make_torch, images=batch)


def sample_works(tiny, device, batch=None):
    batch = batch or (2 if tiny else (64 if device.name == "gpu" else 1))
    return [sample_work(tiny, batch, steps=2 if tiny else 50)]


# ================================================================================================
# running a suite
# ================================================================================================
def run_work(work: Work, device: Device, torch, rates, repeats, warmup):
    """Time one row: minidiff and PyTorch (when available), runs alternating; count its work and kernels."""
    run = work.make(device, work.batch)
    runs = [(run, device.sync)]
    torch_run = None
    if torch is not None and work.make_torch is not None:
        torch_run = work.make_torch(torch, device, work.batch)
        runs.append((torch_run, lambda: _torch_sync(torch, device)))
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
                     f"{'on' if env['fused_kernels'] else 'off (MINIDIFF_FUSED=0)'}; no cuDNN in CuPy")
        if env["torch"]:
            lines.append(f"torch: cuDNN conv TF32={env['torch_conv_tf32']}, matmul TF32={env['torch_matmul_tf32']}")
    else:
        lines.append(f"BLAS threads (OPENBLAS_NUM_THREADS): {env['blas_threads']}"
                     + (f", torch threads: {env['torch_threads']}" if env["torch"] else ""))
    lines.append(f"floors: GEMM {env['gemm_flops_per_s'] / 1e9:.0f} GFLOP/s, copy "
                 f"{env['copy_bytes_per_s'] / 1e9:.0f} GB/s (measured now)")
    return "\n".join(lines)


# ================================================================================================
# --check: every fused kernel against the plain code it replaces (GPU)
# ================================================================================================
def fused_cases():
    """[(name, run)] where run(xp, rng) -> dict of named output arrays of one op's forward and
    backward; comparing the dicts with fused kernels on and off checks a kernel."""
    from .nn import functional as F  # noqa: PLC0415
    from .nn.module import Parameter  # noqa: PLC0415
    from .optim import AdamW  # noqa: PLC0415

    def inputs(xp, rng, *shapes):
        return [xp.asarray(rng.standard_normal(s).astype(np.float32)) for s in shapes]

    def pair(forward, backward, *shapes, **options):
        def run(xp, rng):
            *args, dy = inputs(xp, rng, *shapes)
            y, cache = forward(*args, **options)
            grads = backward(dy, cache)
            grads = grads if isinstance(grads, tuple) else (grads,)
            return {"y": y, **{f"d{i}": g for i, g in enumerate(grads) if g is not None}}
        return run

    def attention(masked, head_dim=8):
        def run(xp, rng):
            q, k, v, dy = inputs(xp, rng, (2, 3, 7, head_dim), (2, 3, 5, head_dim), (2, 3, 5, 4), (2, 3, 7, 4))
            mask = None
            if masked:
                mask = xp.asarray(rng.random((2, 1, 7, 5)) < 0.7)
                mask[0, 0, 0] = False                             # one fully masked query row
            y, cache = F.attention(q, k, v, mask)
            grads = F.attention_backward(dy, cache)
            return dict(zip(("y", "P", "dq", "dk", "dv"), (y, F.attention_probs(cache)) + tuple(grads)))
        return run

    def adamw(xp, rng):
        data, grad, bias, bias_grad = inputs(xp, rng, (33, 17), (33, 17), (17,), (17,))
        params = [Parameter(data), Parameter(bias)]
        optimizer = AdamW(params, lr=1e-2, weight_decay=0.1)
        for step in range(4):                                     # fused: from step 2 on, one flat update
            optimizer.zero_grad()
            for p, g in zip(params, (grad, bias_grad)):
                p.accumulate(g * (step + 1))
            optimizer.step()
        return {"theta": params[0].data, "bias": params[1].data, "m": optimizer.exp_avg["0"],
                "v": optimizer.exp_avg_sq["1"]}

    x4 = (3, 8, 5, 6)
    return [
        ("silu", pair(F.silu, F.silu_backward, x4, x4)),
        ("gelu (erf)", pair(F.gelu, F.gelu_backward, x4, x4)),
        ("gelu (tanh)", pair(F.gelu, F.gelu_backward, x4, x4, approximate="tanh")),
        ("softmax", pair(F.softmax, F.softmax_backward, (4, 9, 33), (4, 9, 33))),
        ("attention (masked)", attention(masked=True)),
        ("attention (head dim 64)", attention(masked=False, head_dim=64)),
        ("group_norm", pair(F.group_norm, F.group_norm_backward, x4, (8,), (8,), x4, num_groups=4)),
        ("group_norm + SiLU", pair(F.group_norm_silu, F.group_norm_silu_backward, x4, (8,), (8,), x4,
                                   num_groups=2)),
        ("group_norm, 64x64 groups", pair(F.group_norm, F.group_norm_backward, (2, 8, 64, 64), (8,), (8,),
                                          (2, 8, 64, 64), num_groups=2)),
        ("layer_norm", pair(F.layer_norm, F.layer_norm_backward, (4, 7, 24), (24,), (24,), (4, 7, 24))),
        ("conv2d 3x3 pad 1 (im2col/col2im)", pair(F.conv2d, F.conv2d_backward, (2, 3, 9, 7), (5, 3, 3, 3),
                                                  (5,), (2, 5, 9, 7), padding=1)),
        ("conv2d 3x3 stride 2", pair(F.conv2d, F.conv2d_backward, (2, 4, 8, 8), (6, 4, 3, 3), (6,),
                                     (2, 6, 4, 4), stride=2, padding=1)),
        ("conv2d 1x1", pair(F.conv2d, F.conv2d_backward, (2, 6, 5, 5), (4, 6, 1, 1), (4,), (2, 4, 5, 5))),
        ("conv2d 3x3 on 17x17 (batch-first columns)", pair(F.conv2d, F.conv2d_backward, (2, 3, 17, 17),
                                                           (4, 3, 3, 3), (4,), (2, 4, 17, 17), padding=1)),
        ("conv_transpose2d", pair(F.conv_transpose2d, F.conv_transpose2d_backward, (2, 3, 4, 5),
                                  (3, 4, 3, 3), (4,), (2, 4, 8, 10), stride=2, padding=1, output_padding=1)),
        ("AdamW (4 steps)", adamw),
    ]


def compare_fused(run, seed=0):
    """{output name: max |fused - plain|} and the largest |plain| value, fused kernels on vs off."""
    xp = backend.get_xp()
    results = {}
    for fused in (False, True):
        previous = backend.set_fused(fused)
        try:
            results[fused] = {k: backend.to_numpy(v) for k, v in run(xp, np.random.default_rng(seed)).items()}
        finally:
            backend.set_fused(previous)
    plain, fused = results[False], results[True]
    diffs = {k: float(np.max(np.abs(fused[k].astype(np.float64) - plain[k]))) for k in plain}
    return diffs, max(float(np.max(np.abs(v))) for v in plain.values())


def run_checks(tolerance=1e-4):
    """Print max |fused - plain| per kernel output (relative to the output scale); True if all pass."""
    print("fused CuPy kernels vs the plain code (max abs difference per output):")
    ok = True
    records = []
    for name, run in fused_cases():
        diffs, scale = compare_fused(run)
        worst = max(diffs.values()) / max(scale, 1.0)
        passed = worst <= tolerance
        ok &= passed
        records.append({"kernel": name, "max_abs_diff": diffs, "scale": scale, "passed": passed})
        print(f"  {'ok  ' if passed else 'FAIL'} {name:<34} " + "  ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    return ok, records


# ================================================================================================
# command line
# ================================================================================================
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


def _positive(name, value):
    if value is not None and value < 1:
        raise ValueError(f"bench: {name} must be a positive integer, got {value}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _positive("--batch", args.batch)
        _positive("--repeats", args.repeats)
        device = Device.select(args.device)
    except (ValueError, RuntimeError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    torch, why_no_torch = _torch(device, not args.no_torch)
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
        from .utils import atomic_write_bytes  # noqa: PLC0415
        atomic_write_bytes(Path(args.json), json.dumps(report, indent=1).encode())
        print(f"\nwrote {args.json}")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
