"""Module and Parameter: the containers that hold weights and call the functional pairs.

A ``Module`` is a plain Python object whose attributes may be ``Parameter``s, other ``Module``s,
or lists of ``Module``s. It has two methods that matter:

    out = module.forward(*inputs)     # computes; caches what backward needs (training + grad on)
    dx  = module.backward(d_out)      # returns grads w.r.t. the inputs; ADDS into p.grad

There is no autograd: every composite module writes ``backward`` by hand, mirroring ``forward``
in reverse. A module caches only its most recent forward pass, so an instance runs at most once
per forward pass (or keeps a stack of caches and says so).

Caching happens only when ``module.training`` is True and gradients are enabled; inside
``with no_grad():`` or after ``module.eval()`` nothing is stored (sampling stays lean).
"""
from __future__ import annotations

import contextlib

import numpy as np

from .. import backend

_grad_enabled = True


def is_grad_enabled() -> bool:
    return _grad_enabled


@contextlib.contextmanager
def no_grad():
    """Within this block no module caches activations (inference only)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


class Parameter:
    """A learnable array ``data`` and its gradient ``grad`` (None until a backward pass adds one)."""

    __slots__ = ("data", "grad", "grad_buffer")

    def __init__(self, data):
        self.data = data
        self.grad = None
        self.grad_buffer = None     # optional home for grad, set by an optimiser (see optim.AdamW)

    @property
    def shape(self):
        return self.data.shape

    def accumulate(self, g):
        """grad += g (allocating on first use): gradients from several uses add up."""
        if g is None:
            return
        if g.shape != self.data.shape:
            raise ValueError(f"gradient of shape {g.shape} for a parameter of shape {self.data.shape}")
        if self.grad is None:
            buffer = self.grad_buffer
            if buffer is not None and buffer.shape == g.shape and type(buffer) is type(g):
                buffer[...] = g                       # into the optimiser's flat gradient buffer
                self.grad = buffer
            else:
                self.grad = g.astype(self.data.dtype, copy=True)
        else:
            self.grad += g

    def zero_grad(self):
        self.grad = None

    def __repr__(self):
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype})"


class Module:
    """Base class: parameter discovery, state dicts, train/eval, device and dtype moves."""

    training = True

    # -- the two methods subclasses write --------------------------------------------------
    def forward(self, *inputs):
        raise NotImplementedError

    def backward(self, grad_out):
        raise NotImplementedError

    def __call__(self, *inputs, **kwargs):
        return self.forward(*inputs, **kwargs)

    @property
    def caching(self) -> bool:
        """Whether forward should store a cache for backward (training mode and grad enabled)."""
        return self.training and _grad_enabled

    # -- discovery ---------------------------------------------------------------------------
    def _children(self):
        """(name, value) pairs of attributes that are Parameters, Modules or lists of Modules,
        in definition order."""
        for name, value in vars(self).items():
            if isinstance(value, (Parameter, Module)):
                yield name, value
            elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Module) for v in value):
                for i, v in enumerate(value):
                    yield f"{name}.{i}", v

    def named_parameters(self, prefix: str = ""):
        """[(dotted name, Parameter)] in a deterministic order (attribute definition order)."""
        out = []
        for name, value in self._children():
            full = f"{prefix}{name}"
            if isinstance(value, Parameter):
                out.append((full, value))
            else:
                out.extend(value.named_parameters(full + "."))
        return out

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def modules(self):
        """This module and every sub-module, depth first."""
        yield self
        for _, value in self._children():
            if isinstance(value, Module):
                yield from value.modules()

    def num_parameters(self) -> int:
        return int(sum(p.data.size for p in self.parameters()))

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    # -- modes -------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        for m in self.modules():
            m.training = mode
        return self

    def eval(self):
        return self.train(False)

    # -- state -------------------------------------------------------------------------------
    def state_dict(self):
        """{dotted name: host NumPy copy of the parameter}."""
        return {name: backend.to_numpy(p.data).copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state, strict: bool = True):
        """Copy arrays into the parameters (kept on their current device and dtype).

        Raises ValueError naming the first missing, unexpected or mis-shaped key."""
        params = dict(self.named_parameters())
        if strict:
            missing = [k for k in params if k not in state]
            unexpected = [k for k in state if k not in params]
            if missing:
                raise ValueError(f"load_state_dict: missing key {missing[0]!r} ({len(missing)} missing)")
            if unexpected:
                raise ValueError(f"load_state_dict: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected)")
        for name, p in params.items():
            if name not in state:
                continue
            value = state[name]
            if tuple(value.shape) != tuple(p.data.shape):
                raise ValueError(f"load_state_dict: {name!r} has shape {tuple(value.shape)} in the state "
                                 f"but {tuple(p.data.shape)} in the model")
            xp = backend.get_array_module(p.data)
            host = backend.to_numpy(value).astype(p.data.dtype)
            p.data = xp.asarray(host) if xp is not np else host.copy()
        return self

    def to(self, device: str | None = None, dtype=None):
        """Move every parameter (and its grad) to ``device`` ("cpu"/"gpu") and/or cast to ``dtype``."""
        for p in self.parameters():
            for attr in ("data", "grad"):
                value = getattr(p, attr)
                if value is None:
                    continue
                if device is not None:
                    value = backend.to_device(value, device)
                if dtype is not None:
                    value = value.astype(dtype)
                setattr(p, attr, value)
        return self


class Sequential(Module):
    """Modules applied in order; backward runs them in reverse."""

    def __init__(self, *layers):
        self.layers = list(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad_out):
        for layer in reversed(self.layers):
            grad_out = layer.backward(grad_out)
        return grad_out

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)
