"""LoRA: low-rank adapters on a frozen model's linear layers (Hu et al., 2021).

Fine-tuning changes a weight matrix W (out, in) by some dW. LoRA bets that the change a new
concept needs is of low rank, and trains it in factored form, leaving W itself untouched:

    y = x W^T + (alpha / r) (x A^T) B^T         A: (r, in),  B: (out, r),  r << min(in, out)

B starts at zero, so at step 0 the adapted model *is* the base model, exactly; A starts random
(PyTorch's Linear initialisation, as PEFT does), so B's first gradient is not zero. Only A and B
train: r (in + out) numbers per layer instead of in * out.

The derivative, with u = x A^T (the r-dimensional bottleneck) and s = alpha / r:

    y = base(x) + s u B^T
    dB = s dy^T u          dU = s dy B          dA = dU^T x          dx = base'(dy) + dU A

(dy^T u sums over every leading axis: batch and tokens.) Merging folds the adapter into the weight
for free inference, W' = W + s B A, with the same output as the adapted layer.

Adapters here ride *beside* the base layers rather than replacing them: ``attach`` points a
Linear's forward and backward at its adapter, so the base model's parameter names (and its
shipped checkpoint) stay exactly as they were, and ``detach`` puts them back.

    adapters = add_lora(unet, rank=4, alpha=4)         # q, k, v, out of every self- and cross-attention
    adapters.parameters()                               # the adapters' A and B only: what fit() trains
    merge_lora(adapters)                                # W <- W + s B A, adapters detached
    zoo.save_adapter(path, adapters, base_config); zoo.load_adapter(path, unet)     # the files: zoo.py

Read beside: ``minidiff/nn/layers.py`` (Linear, MultiHeadAttention) and ``minidiff/train/finetune.py``.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module
from ..checks import positive_int
from ..nn.layers import Linear, _CachingModule
from ..nn.module import Module, Parameter

__all__ = ["LoRALinear", "LoRAAdapters", "ATTENTION_PROJECTIONS", "attention_projections", "add_lora",
           "merge_lora", "AdapterMismatch"]

ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out")


class AdapterMismatch(ValueError):
    """An adapter file made for another base model (or not an adapter at all)."""


class LoRALinear(_CachingModule):
    """y = base(x) + scale * (alpha / r) (x A^T) B^T around a frozen ``Linear``.

    ``scale`` (default 1) weighs the adapter at inference (``--lora-scale``); 0 is the base model.
    Its parameters are A and B alone: the base Linear's weights are not the adapter's."""

    def __init__(self, base: Linear, rank: int = 4, alpha: float | None = None, rng=None):
        if not isinstance(base, Linear):
            raise ValueError(f"LoRALinear: wraps a Linear, got {type(base).__name__}")
        self.rank = positive_int("LoRALinear", "rank", rank)
        self.alpha = float(self.rank if alpha is None else alpha)
        rng = np.random.default_rng() if rng is None else rng
        dtype = base.weight.data.dtype
        bound = 1.0 / math.sqrt(base.in_features)
        # A ~ U(-1/sqrt(in), 1/sqrt(in)) as a Linear(in, r);  B = 0: the adapted layer starts as the base
        self.lora_A = Parameter(rng.uniform(-bound, bound, (self.rank, base.in_features)).astype(dtype))
        self.lora_B = Parameter(np.zeros((base.out_features, self.rank), dtype))
        self.scale = 1.0
        self._base = base                                        # frozen; not among this module's parameters
        xp = get_array_module(base.weight.data)
        if xp is not np:
            self.lora_A.data, self.lora_B.data = xp.asarray(self.lora_A.data), xp.asarray(self.lora_B.data)

    def _children(self):
        yield "lora_A", self.lora_A                              # A and B only: the base Linear is frozen
        yield "lora_B", self.lora_B

    @property
    def base(self) -> Linear:
        return self._base

    @property
    def factor(self) -> float:
        """s = scale * alpha / r: what multiplies (x A^T) B^T."""
        return self.scale * self.alpha / self.rank

    def forward(self, x):
        y = Linear.forward(self._base, x)                        # x W^T + b, the frozen path (its own cache)
        u = x @ self.lora_A.data.T                               # (..., r): the bottleneck
        s = x.dtype.type(self.factor)
        self._keep((x, u))
        return y + s * (u @ self.lora_B.data.T)                  # + s u B^T: (..., out)

    def backward(self, dy):
        x, u = self._take_cache()
        s = dy.dtype.type(self.factor)
        dx = Linear.backward(self._base, dy)                     # dy W (and the base's own dW, unused)
        rows_dy = dy.reshape(-1, dy.shape[-1])                   # every leading axis is a row
        # dB = s dy^T u
        self.lora_B.accumulate(s * rows_dy.T @ u.reshape(-1, self.rank))
        # dU = s dy B
        du = s * (dy @ self.lora_B.data)                         # (..., r)
        # dA = dU^T x
        self.lora_A.accumulate(du.reshape(-1, self.rank).T @ x.reshape(-1, x.shape[-1]))
        # dx = base'(dy) + dU A
        return dx + du @ self.lora_A.data

    def delta_weight(self):
        """s B A (out, in): what merging adds to the base weight."""
        return self.lora_B.data.dtype.type(self.factor) * (self.lora_B.data @ self.lora_A.data)

    # -- riding beside the base layer --------------------------------------------------------------
    def attach(self):
        """Route the base Linear's forward and backward through this adapter."""
        self._base.forward, self._base.backward = self.forward, self.backward

    def detach(self):
        """The base Linear computes x W^T + b again, on its own."""
        for name in ("forward", "backward"):
            vars(self._base).pop(name, None)


class LoRAAdapters(Module):
    """The adapters of one model, by the dotted name of the Linear each one wraps.

    ``named_parameters()`` gives "<layer name>.lora_A" / ".lora_B": the keys of a saved adapter."""

    def __init__(self, layers: dict, rank: int, alpha: float, targets=ATTENTION_PROJECTIONS):
        self.layers = dict(layers)                                # {name: LoRALinear}
        self.rank, self.alpha, self.targets = rank, float(alpha), tuple(targets)

    def _children(self):
        yield from self.layers.items()

    @property
    def scale(self) -> float:
        return next(iter(self.layers.values())).scale

    def set_scale(self, scale: float):
        """Weigh every adapter by ``scale`` (0: the base model; 1: as trained)."""
        if not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ValueError(f"lora scale must be a finite number, got {scale!r}")
        for layer in self.layers.values():
            layer.scale = float(scale)
        return self

    def attach(self):
        for layer in self.layers.values():
            layer.attach()
        return self

    def detach(self):
        for layer in self.layers.values():
            layer.detach()
        return self

    def settings(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets)}


def attention_projections(model, targets=ATTENTION_PROJECTIONS):
    """[(dotted name, Linear)] of the q, k, v and out projections of every attention layer
    (self- and cross-attention) of ``model``, found by walking its modules."""
    from ..nn.layers import MultiHeadAttention
    found = []

    def walk(module, prefix):
        for name, child in module._children():
            if not isinstance(child, Module):
                continue
            full = f"{prefix}{name}"
            if isinstance(child, MultiHeadAttention):
                found.extend((f"{full}.{t}", getattr(child, t)) for t in targets)
            else:
                walk(child, full + ".")
    walk(model, "")
    return found


def add_lora(model, rank: int = 4, alpha: float | None = None, targets=ATTENTION_PROJECTIONS, seed: int = 0):
    """Attach a LoRALinear (B = 0) to every attention projection of ``model``; returns the adapters."""
    bad = [t for t in targets if t not in ATTENTION_PROJECTIONS]
    if bad or not targets:
        raise ValueError(f"add_lora: targets must be a non-empty subset of {ATTENTION_PROJECTIONS}, got {targets!r}")
    rng = np.random.default_rng(seed)
    alpha = float(rank if alpha is None else alpha)
    layers = {name: LoRALinear(linear, rank, alpha, rng=rng) for name, linear in attention_projections(model, targets)}
    if not layers:
        raise ValueError(f"add_lora: {type(model).__name__} has no attention layers to adapt")
    return LoRAAdapters(layers, rank, alpha, targets).attach()


def merge_lora(adapters: LoRAAdapters):
    """W <- W + s B A in every adapted layer, then detach the adapters: the model computes the
    adapted function with no extra cost (and without the adapter's scale knob)."""
    for layer in adapters.layers.values():
        layer.base.weight.data = layer.base.weight.data + layer.delta_weight()
    return adapters.detach()
