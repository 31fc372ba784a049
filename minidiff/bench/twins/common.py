"""What every twin shares: loading a minidiff ``state_dict()`` into a PyTorch module, and reading
its gradients back as {minidiff name: numpy array}. Imports torch: reach it through
``minidiff.bench.twins``, which imports this module only when a twin is asked for."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def load_minidiff_state(twin: nn.Module, state_dict, rename=None):
    """Copy a minidiff ``state_dict()`` ({name: numpy array}) into ``twin``'s parameters, keeping
    each parameter's dtype and device. ``rename(minidiff_name) -> twin_name`` maps names when the
    two differ. Raises ValueError on any missing, unexpected or mis-shaped key."""
    params = dict(twin.named_parameters())
    renamed = {(rename(k) if rename else k): v for k, v in state_dict.items()}
    missing = sorted(set(params) - set(renamed))
    unexpected = sorted(set(renamed) - set(params))
    if missing or unexpected:
        raise ValueError(f"load_minidiff_state: missing {missing[:5]} ({len(missing)}), "
                         f"unexpected {unexpected[:5]} ({len(unexpected)})")
    with torch.no_grad():
        for name, value in renamed.items():
            p = params[name]
            value = torch.as_tensor(np.asarray(value))
            if tuple(value.shape) != tuple(p.shape):
                raise ValueError(f"load_minidiff_state: {name!r} is {tuple(value.shape)} in the state, "
                                 f"{tuple(p.shape)} in the twin")
            p.copy_(value.to(dtype=p.dtype, device=p.device))
    return twin


def twin_grads(twin: nn.Module, rename=None):
    """{name: numpy gradient} of every parameter after ``loss.backward()`` (zeros where untouched)."""
    grads = {}
    for name, p in twin.named_parameters():
        grad = torch.zeros_like(p) if p.grad is None else p.grad
        grads[rename(name) if rename else name] = grad.detach().cpu().numpy()
    return grads
