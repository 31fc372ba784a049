"""The ops suite: single functional ops timed forward + backward, and one AdamW update.

conv2d (B=64, 64->64 channels, 32x32, 3x3), group_norm (B=64, C=128, 16x16, 32 groups), attention
(B=64, 4 heads, L=256, d=32), linear, SiLU, GELU, softmax, and one AdamW update of the latent8
U-Net's parameters (gradients arrive through backward's accumulate, as in training: on a GPU that
is the flat one-kernel update). PyTorch runs the same op through its autograd.
"""
from __future__ import annotations

import numpy as np

from ..models.unet import UNet, UNetConfig
from ..nn import functional as F
from ..nn.module import Parameter
from ..optim import AdamW
from .work import Work, host_normal, to_torch


def _op_work(name, shape, batch, host_inputs, minidiff_fn, torch_fn):
    """An op benchmarked forward + backward: host_inputs(batch) -> list of arrays (the last one
    is the upstream gradient); minidiff_fn(*arrays) and torch_fn(torch, *tensors) run the op."""
    def make(device, b):
        arrays = [device.put(a) for a in host_inputs(b)]
        return lambda: minidiff_fn(*arrays)

    def make_torch(torch, device, b):
        host = host_inputs(b)
        tensors = [to_torch(torch, device, a, grad=i < len(host) - 1) for i, a in enumerate(host)]
        return lambda: torch_fn(torch, *tensors)
    return Work("ops", name, shape, batch, make, make_torch)


def _grads(torch, out, inputs, d_out):
    return torch.autograd.grad(out, inputs, d_out)


def ops_works(tiny, batch=None):
    """The ops suite: each op forward + backward, then one AdamW update (tiny: small shapes)."""
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
                 lambda b: [host_normal(rng, (b, C, HW, HW)), host_normal(rng, (C, C, 3, 3), 0.05),
                            host_normal(rng, (C,)), host_normal(rng, (b, C, HW, HW))],
                 conv, lambda torch, x, w, b, dy: _grads(
                     torch, torch.nn.functional.conv2d(x, w, b, padding=1), (x, w, b), dy)),
        _op_work("group_norm fwd+bwd", f"B={B} C={Cg} {HWg}x{HWg} G={G}", B,
                 lambda b: [host_normal(rng, activation_shape(b)), 1 + host_normal(rng, (Cg,), 0.1),
                            host_normal(rng, (Cg,), 0.1), host_normal(rng, activation_shape(b))],
                 group_norm, lambda torch, x, g, be, dy: _grads(
                     torch, torch.nn.functional.group_norm(x, G, g, be), (x, g, be), dy)),
        _op_work("attention fwd+bwd", f"B={B} h={heads} L={L} d={d}", B,
                 lambda b: [host_normal(rng, (b, heads, L, d)) for _ in range(4)],
                 attention, lambda torch, q, k, v, dy: _grads(
                     torch, torch.nn.functional.scaled_dot_product_attention(q, k, v), (q, k, v), dy)),
        _op_work("linear fwd+bwd", f"{B}x{tokens} tokens {d_in}->{d_out}", B,
                 lambda b: [host_normal(rng, (b * tokens, d_in)), host_normal(rng, (d_out, d_in), 0.05),
                            host_normal(rng, (d_out,)), host_normal(rng, (b * tokens, d_out))],
                 linear, lambda torch, x, w, b, dy: _grads(
                     torch, torch.nn.functional.linear(x, w, b), (x, w, b), dy)),
        _op_work("silu fwd+bwd", f"B={B} C={Cg} {HWg}x{HWg}", B,
                 lambda b: [host_normal(rng, activation_shape(b)) for _ in range(2)],
                 unary("silu"), lambda torch, x, dy: _grads(
                     torch, torch.nn.functional.silu(x), (x,), dy)),
        _op_work("gelu fwd+bwd", f"{B}x{tokens} tokens x {d_out}", B,
                 lambda b: [host_normal(rng, (b * tokens, d_out)) for _ in range(2)],
                 unary("gelu"), lambda torch, x, dy: _grads(
                     torch, torch.nn.functional.gelu(x), (x,), dy)),
        _op_work("softmax fwd+bwd", f"B={B} h={heads} {L}x{L}", B,
                 lambda b: [host_normal(rng, (b, heads, L, L)) for _ in range(2)],
                 unary("softmax"), lambda torch, x, dy: _grads(
                     torch, torch.softmax(x, dim=-1), (x,), dy)),
    ]
    works.append(_adamw_work(tiny))
    return works


def _adamw_work(tiny):
    """One AdamW update of every parameter of the latent8 U-Net (tiny: the tiny U-Net)."""
    config = UNetConfig.tiny() if tiny else UNetConfig.latent8()
    shapes = [p.data.shape for p in UNet(config).parameters()]
    rng = np.random.default_rng(0)
    host = [(host_normal(rng, s), host_normal(rng, s, 1e-3)) for s in shapes]

    def make(device, b):
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
            p = torch.nn.Parameter(to_torch(torch, device, data))
            p.grad = to_torch(torch, device, grad)
            params.append(p)
        return torch.optim.AdamW(params, lr=1e-4).step
    n = sum(int(np.prod(s)) for s in shapes)
    return Work("ops", "AdamW step", f"{len(shapes)} tensors, {n / 1e6:.2f}M params", 1,
                make, make_torch)
