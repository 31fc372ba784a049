"""Optimisation: AdamW, an exponential moving average (EMA) of the weights, gradient clipping
and the warmup + cosine learning-rate schedule.

A training step with all four, as ``minidiff/train/loop.py`` runs it:

    model.zero_grad()
    loss = ...; model.backward(...)                  # fills p.grad
    clip_grad_norm(model, max_norm=1.0)              # rescale the grads if ||g|| > 1
    optimizer.step()                                 # at lr(t), e.g. AdamW(model, lr=lambda t: warmup_cosine(t, ...))
    ema.update()                                     # shadow <- decay shadow + (1 - decay) theta

Everything here stays on the parameters' device: the optimiser and EMA states are arrays beside
the parameters, and nothing in ``step()``, ``update()`` or ``clip_grad_norm`` reads a number back
to the host (no ``.item()``, no ``float(array)``), so a GPU step is never stalled by a sync.
The step counter and the bias corrections are plain Python numbers on the host.

Parameters may be given as a ``Module`` (state keys are then the parameters' dotted names, as in
``model.state_dict()``) or as a list of ``Parameter``s (keys "0", "1", ...).
"""
from __future__ import annotations

import math

import numpy as np

from . import backend
from .nn.fast import kernels  # the fused AdamW kernel (GPU); the update below is the math
from .nn.module import Module, Parameter


def _named_params(params):
    """[(name, Parameter)] from a Module, a list of Parameters, or a list of (name, Parameter)."""
    if isinstance(params, Module):
        return params.named_parameters()
    params = list(params)
    if all(isinstance(p, Parameter) for p in params):
        return [(str(i), p) for i, p in enumerate(params)]
    if all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[1], Parameter) for p in params):
        return [(str(n), p) for n, p in params]
    raise ValueError("expected a Module, a list of Parameters or a list of (name, Parameter) pairs, "
                     f"got a list holding {sorted({type(p).__name__ for p in params})}")


def _on_device_of(value, array):
    """``value`` moved to ``array``'s device if it is not there (a type check; no copy otherwise)."""
    xp = backend.get_array_module(array)
    if backend.get_array_module(value) is not xp:
        value = xp.asarray(backend.to_numpy(value))
    return value


def _like(array, value):
    """A fresh copy of ``value`` on ``array``'s device, in ``array``'s dtype."""
    xp = backend.get_array_module(array)
    return xp.array(_on_device_of(value, array), dtype=array.dtype, copy=True)


def _load_arrays(owner, what, named, stored):
    """Copy {name: array} from a state dict onto the parameters' devices; clear errors on mismatch."""
    out = {}
    for name, p in named:
        if name not in stored:
            raise ValueError(f"{owner}.load_state_dict: {what} has no entry for parameter {name!r}")
        value = stored[name]
        if tuple(value.shape) != tuple(p.data.shape):
            raise ValueError(f"{owner}.load_state_dict: {what}[{name!r}] has shape {tuple(value.shape)} "
                             f"but the parameter has shape {tuple(p.data.shape)}")
        out[name] = _like(p.data, value)
    extra = [k for k in stored if k not in out]
    if extra:
        raise ValueError(f"{owner}.load_state_dict: {what} has an entry {extra[0]!r} for no parameter "
                         f"({len(extra)} unexpected)")
    return out


def _covered_buffers(arrays):
    """[(buffer, [(i, view)])] for every 1-D buffer that the given arrays, all views of it, cover
    completely (as AdamW's flat buffers are covered by the parameters and gradients laid in them);
    one operation on such a buffer then stands for one per array. Arrays that are not such views
    are left out (the caller handles them one by one)."""
    groups = {}
    for i, a in enumerate(arrays):
        base = getattr(a, "base", None)
        if base is not None and base.ndim == 1 and base.dtype == a.dtype:
            groups.setdefault(id(base), (base, []))[1].append((i, a))
    return [(base, views) for base, views in groups.values() if sum(v.size for _, v in views) == base.size]


class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter), the same update as torch.optim.AdamW.

    For each parameter theta with gradient g, at step t = 1, 2, ...:

        theta <- theta - lr * lambda * theta                 decoupled weight decay
        m     <- beta1 m + (1 - beta1) g                     first moment (mean of g)
        v     <- beta2 v + (1 - beta2) g^2                   second moment (mean of g^2)
        m_hat  = m / (1 - beta1^t),  v_hat = v / (1 - beta2^t)     bias corrections
        theta <- theta - lr * m_hat / (sqrt(v_hat) + eps)

    ``lr`` is a number, or a schedule: a function ``lr(t)`` of the step t = 1, 2, ... that the optimizer
    calls itself at every step (``lr=lambda t: warmup_cosine(t, 1e-3, 500, 20_000)``), so the rate
    it holds (``self.lr``: the one of its latest step) is always the one it used. ``step(lr=...)``
    sets a fixed rate from that step on. Parameters whose ``grad`` is None are skipped.

    On a GPU (fused kernels on) the first step lays every parameter end to end in one flat buffer:
    each ``p.data`` becomes a view of it, the moments m and v are views of two more, and each
    parameter gets a ``grad_buffer`` view of a fourth, which its next backward pass fills. From
    then on a step is ONE kernel over all parameters at once, instead of one per parameter (a
    model of ~300 parameter arrays spends more time launching kernels than updating numbers).
    The update is the same; a step in which some gradient is missing, or lives elsewhere, takes
    the per-parameter path. A ``p.data`` replaced from outside (``load_state_dict``) is copied
    back into its slot of the buffer at the next step.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        self.lr_schedule = lr if callable(lr) else None
        if self.lr_schedule is not None:
            lr = self.lr_schedule(1)
        if not lr >= 0.0:
            raise ValueError(f"AdamW: lr must be >= 0, got {lr!r}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"AdamW: betas must be two numbers in [0, 1), got {betas!r}")
        if not eps > 0.0:
            raise ValueError(f"AdamW: eps must be > 0, got {eps!r}")
        if not weight_decay >= 0.0:
            raise ValueError(f"AdamW: weight_decay must be >= 0, got {weight_decay!r}")
        self.named = _named_params(params)
        if not self.named:
            raise ValueError("AdamW: got no parameters to optimise")
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.step_count = 0
        self.exp_avg = {}        # name -> m, created at the parameter's first step
        self.exp_avg_sq = {}     # name -> v
        self._flat = None        # GPU: (theta, grad, m, v) flat buffers and the views into them

    def zero_grad(self):
        for _, p in self.named:
            p.grad = None

    def step(self, lr=None):
        """One AdamW update of every parameter that has a gradient."""
        if lr is not None:                      # a fixed rate from now on
            self.lr, self.lr_schedule = float(lr), None
        elif self.lr_schedule is not None:      # the schedule's rate for this step, t = step_count + 1
            self.lr = float(self.lr_schedule(self.step_count + 1))
        lr, (beta1, beta2), eps = self.lr, self.betas, self.eps
        self.step_count += 1
        t = self.step_count
        bias_correction1 = 1.0 - beta1 ** t                          # 1 - beta1^t  (host float)
        bias_correction2 = 1.0 - beta2 ** t                          # 1 - beta2^t
        step_size = lr / bias_correction1
        if self._step_flat(bias_correction1, bias_correction2):
            return
        for name, p in self.named:
            g = p.grad
            if g is None:
                continue
            xp = backend.get_array_module(p.data)
            if name not in self.exp_avg:
                self.exp_avg[name] = xp.zeros_like(p.data)
                self.exp_avg_sq[name] = xp.zeros_like(p.data)
            m = self.exp_avg[name] = _on_device_of(self.exp_avg[name], p.data)
            v = self.exp_avg_sq[name] = _on_device_of(self.exp_avg_sq[name], p.data)
            if backend.use_fused(p.data):                        # the four lines below in one kernel
                kernels.adamw_update(p.data, g, m, v, lr, self.weight_decay, self.betas, eps,
                                     bias_correction1, bias_correction2)
                continue
            # theta <- theta (1 - lr lambda)                         (decoupled weight decay)
            p.data *= 1.0 - lr * self.weight_decay
            # m <- beta1 m + (1 - beta1) g
            m *= beta1
            m += (1.0 - beta1) * g
            # v <- beta2 v + (1 - beta2) g^2
            v *= beta2
            v += (1.0 - beta2) * (g * g)
            # theta <- theta - (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps)   = lr m_hat / (sqrt(v_hat) + eps)
            denom = xp.sqrt(v)
            denom /= math.sqrt(bias_correction2)
            denom += eps
            p.data -= step_size * (m / denom)

    # -- the flat (GPU) path ----------------------------------------------------------------------
    def _build_flat(self):
        """Lay the parameters, their moments and a gradient buffer end to end; re-point every
        p.data, m and v at its view. Returns the views, or None where the path does not apply."""
        params = [p for _, p in self.named]
        first = params[0].data
        if not backend.use_fused(first) or any(type(p.data) is not type(first) or p.data.dtype != first.dtype
                                               for p in params):
            return None
        xp = backend.get_array_module(first)
        total = sum(p.data.size for p in params)
        buffers = {key: xp.zeros(total, dtype=first.dtype) for key in ("theta", "grad", "m", "v")}
        views = {key: [] for key in buffers}
        start = 0
        for name, p in self.named:
            end = start + p.data.size
            for key, flat in buffers.items():
                views[key].append(flat[start:end].reshape(p.data.shape))
            start = end
        for i, (name, p) in enumerate(self.named):
            views["theta"][i][...] = p.data
            p.data = views["theta"][i]
            p.grad_buffer = views["grad"][i]
            if name in self.exp_avg:                     # moments of earlier (per-parameter) steps
                views["m"][i][...] = _on_device_of(self.exp_avg[name], p.data)
                views["v"][i][...] = _on_device_of(self.exp_avg_sq[name], p.data)
            self.exp_avg[name], self.exp_avg_sq[name] = views["m"][i], views["v"][i]
        return buffers, views

    def _step_flat(self, bias_correction1, bias_correction2) -> bool:
        """One fused AdamW kernel over all parameters when every gradient sits in its buffer."""
        if self._flat is None or any(self.exp_avg.get(n) is not m for (n, _), m in zip(self.named,
                                                                                       self._flat[1]["m"])):
            self._flat = self._build_flat()              # first GPU step, or moments loaded from a file
            if self._flat is None:
                return False
        buffers, views = self._flat
        for i, (_, p) in enumerate(self.named):
            if p.grad is not views["grad"][i]:
                return False                             # a missing gradient, or one not in the buffer
            if p.data is not views["theta"][i]:          # replaced from outside: take its values back
                if p.data.shape != views["theta"][i].shape or type(p.data) is not type(buffers["theta"]):
                    self._flat = None
                    return False
                views["theta"][i][...] = p.data
                p.data = views["theta"][i]
        kernels.adamw_update(buffers["theta"], buffers["grad"], buffers["m"], buffers["v"], self.lr,
                             self.weight_decay, self.betas, self.eps, bias_correction1, bias_correction2)
        return True

    def state_dict(self):
        """Host copies: {"step", "lr", "betas", "eps", "weight_decay", "exp_avg": {name: m},
        "exp_avg_sq": {name: v}} (moments only for parameters that have taken a step)."""
        return {
            "step": np.asarray(self.step_count, np.int64),
            "lr": np.asarray(self.lr, np.float64),
            "betas": np.asarray(self.betas, np.float64),
            "eps": np.asarray(self.eps, np.float64),
            "weight_decay": np.asarray(self.weight_decay, np.float64),
            "exp_avg": {k: backend.to_numpy(a).copy() for k, a in self.exp_avg.items()},
            "exp_avg_sq": {k: backend.to_numpy(a).copy() for k, a in self.exp_avg_sq.items()},
        }

    def load_state_dict(self, state):
        """Restore step count, hyperparameters and moments (placed on each parameter's device and
        dtype). A moment for an unknown parameter, or of the wrong shape, is a ValueError."""
        missing = [k for k in ("step", "lr", "betas", "eps", "weight_decay") if k not in state]
        if missing:
            raise ValueError(f"AdamW.load_state_dict: the state has no {missing[0]!r} entry")
        exp_avg, exp_avg_sq = state.get("exp_avg", {}), state.get("exp_avg_sq", {})
        if set(exp_avg) != set(exp_avg_sq):
            raise ValueError("AdamW.load_state_dict: exp_avg and exp_avg_sq hold different parameters")
        stepped = [(n, p) for n, p in self.named if n in exp_avg]
        self.exp_avg = _load_arrays("AdamW", "exp_avg", stepped, exp_avg)
        self.exp_avg_sq = _load_arrays("AdamW", "exp_avg_sq", stepped, exp_avg_sq)
        self.step_count = int(np.asarray(state["step"]))
        self.lr = float(np.asarray(state["lr"]))
        self.betas = tuple(float(b) for b in np.asarray(state["betas"]))
        self.eps = float(np.asarray(state["eps"]))
        self.weight_decay = float(np.asarray(state["weight_decay"]))
        return self


class AdamWGroups:
    """AdamW with weight decay on matrices and kernels (ndim >= 2) but not on biases, norm scales
    or scalars such as CLIP's temperature: decaying those toward 0 only hurts."""

    def __init__(self, model, lr, betas=(0.9, 0.999), weight_decay=0.0):
        """lr: a number or a schedule lr(t), as for AdamW (both groups follow it)."""
        named = model.named_parameters()
        decay = [(n, p) for n, p in named if p.data.ndim >= 2]
        no_decay = [(n, p) for n, p in named if p.data.ndim < 2]
        self.groups = {"decay": AdamW(decay, lr=lr, betas=betas, weight_decay=weight_decay)}
        if no_decay:
            self.groups["no_decay"] = AdamW(no_decay, lr=lr, betas=betas, weight_decay=0.0)

    def step(self, lr=None):
        for optimizer in self.groups.values():
            optimizer.step(lr=lr)

    @property
    def lr(self):
        return self.groups["decay"].lr

    def state_dict(self):
        return {name: optimizer.state_dict() for name, optimizer in self.groups.items()}

    def load_state_dict(self, state):
        for name, optimizer in self.groups.items():
            if name not in state:
                raise ValueError(f"optimizer state has no {name!r} group")
            optimizer.load_state_dict(state[name])
        return self


class EMA:
    """Exponential moving average of the weights; sampling from it gives smoother results.

        shadow <- decay_n * shadow + (1 - decay_n) * theta          after every optimiser step

    With ``warmup=True`` the decay ramps up over the first updates,
    decay_n = min(decay, (1 + n) / (10 + n)) with n = the number of updates before this one,
    so the average is not dominated by the random initial weights in a short run.

    ``copy_to(model)`` writes the averaged weights into a model; ``swap(model)`` exchanges them
    with the model's own (call it again to swap back), e.g. to evaluate with the EMA weights.
    """

    def __init__(self, params, decay=0.999, warmup=True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA: decay must be in [0, 1), got {decay!r}")
        self.named = _named_params(params)
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.shadow = {name: _like(p.data, p.data) for name, p in self.named}
        self._flat, self._flat_names, self._flat_bases = None, set(), []

    def current_decay(self):
        """decay_n for the next update (a host float)."""
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    def update(self):
        decay = self.current_decay()
        for shadow, theta in self._flat_pairs():          # whole flat buffers (see AdamW), one update each
            shadow -= (1.0 - decay) * (shadow - theta)
        done = self._flat_names
        for name, p in self.named:
            if name in done:
                continue
            s = self.shadow[name] = _on_device_of(self.shadow[name], p.data)
            # shadow <- decay shadow + (1 - decay) theta  =  shadow - (1 - decay)(shadow - theta)
            s -= (1.0 - decay) * (s - p.data)
        self.num_updates += 1

    def _flat_pairs(self):
        """[(flat shadow, flat parameters)] for the parameter buffers AdamW laid out (on a GPU): the
        shadow gets the same layout, its entries becoming views of it, so one update covers a whole
        buffer. Rebuilt whenever the parameters move to other buffers."""
        params = [p.data for _, p in self.named]
        if self._flat is not None and all(p.base is theta for p, theta in zip(params, self._flat_bases)):
            return self._flat
        self._flat, self._flat_names = [], set()
        self._flat_bases = [None] * len(params)
        for theta, views in _covered_buffers(params):
            if not backend.use_fused(theta):
                continue
            xp = backend.get_array_module(theta)
            flat_shadow = xp.empty_like(theta)
            for i, view in views:
                name = self.named[i][0]
                offset = (backend.address(view) - backend.address(theta)) // theta.itemsize
                entry = flat_shadow[offset:offset + view.size].reshape(view.shape)
                entry[...] = _on_device_of(self.shadow[name], view)
                self.shadow[name] = entry
                self._flat_names.add(name)
                self._flat_bases[i] = theta
            self._flat.append((flat_shadow, theta))
        return self._flat

    def _targets(self, model):
        """The (name, Parameter) pairs to write into: ``model``'s, or the tracked ones."""
        if model is None:
            return self.named
        named = _named_params(model)
        names = [n for n, _ in named]
        if names != [n for n, _ in self.named]:
            first = next((n for n in names if n not in self.shadow), names[0] if names else None)
            raise ValueError(f"EMA: the model's parameters do not match the averaged ones (first: {first!r})")
        return named

    def copy_to(self, model=None):
        """theta <- shadow for every parameter of ``model`` (default: the tracked parameters)."""
        for name, p in self._targets(model):
            p.data = _like(p.data, self.shadow[name])

    def swap(self, model=None):
        """Exchange the model's weights and the averaged ones (swap twice to undo)."""
        for name, p in self._targets(model):
            p.data, self.shadow[name] = _on_device_of(self.shadow[name], p.data), p.data

    def state_dict(self):
        return {"decay": np.asarray(self.decay, np.float64),
                "warmup": np.asarray(self.warmup),
                "num_updates": np.asarray(self.num_updates, np.int64),
                "shadow": {k: backend.to_numpy(a).copy() for k, a in self.shadow.items()}}

    def load_state_dict(self, state):
        for key in ("decay", "num_updates", "shadow"):
            if key not in state:
                raise ValueError(f"EMA.load_state_dict: the state has no {key!r} entry")
        self.shadow = _load_arrays("EMA", "shadow", self.named, state["shadow"])
        self._flat, self._flat_names = None, set()
        self.decay = float(np.asarray(state["decay"]))
        self.warmup = bool(np.asarray(state.get("warmup", self.warmup)))
        self.num_updates = int(np.asarray(state["num_updates"]))
        return self


def clip_grad_norm(params, max_norm):
    """Rescale all gradients together so that their global L2 norm is at most ``max_norm``.

        ||g|| = sqrt(sum_p ||g_p||^2)                     one norm over every parameter
        g_p  <- g_p * min(1, max_norm / (||g|| + 1e-6))

    The scaling is applied unconditionally (a factor of 1 when the norm is small enough), so no
    number is read back from the device. Returns ||g|| before clipping as a 0-d array on the
    gradients' device (log it every N steps with ``float(...)``, which syncs).
    """
    if not max_norm > 0:
        raise ValueError(f"clip_grad_norm: max_norm must be > 0, got {max_norm!r}")
    grads = [p.grad for _, p in _named_params(params) if p.grad is not None]
    if not grads:
        return np.zeros((), np.float32)
    xp = backend.get_array_module(grads[0])
    dtype = grads[0].dtype
    # gradients that fill one of AdamW's flat buffers are handled as that one buffer
    flat = [buffer for buffer, _ in _covered_buffers(grads) if backend.use_fused(buffer)]
    in_flat = {id(buffer) for buffer in flat}
    pieces = flat + [g for g in grads if id(getattr(g, "base", None)) not in in_flat]
    # ||g||^2 = sum over parameters of sum over entries of g^2
    total_norm = xp.sqrt(sum(xp.vdot(g.ravel(), g.ravel()) for g in pieces)).astype(dtype)
    # factor = min(1, max_norm / (||g|| + 1e-6))
    # (Python floats are "weak" under NEP 50: they keep the gradients' dtype)
    factor = xp.minimum(float(max_norm) / (total_norm + 1e-6), 1.0)
    for g in pieces:
        g *= factor
    return total_norm


def warmup_cosine(step, base_lr, warmup_steps, total_steps, min_lr=0.0):
    """Learning rate at ``step`` (0-based): linear warmup, then a cosine decay to ``min_lr``.

        step < W:        lr = base_lr * step / W
        W <= step <= T:  lr = min_lr + (base_lr - min_lr) * (1 + cos(pi (step - W) / (T - W))) / 2
        step > T:        lr = min_lr

    so lr = base_lr exactly at the end of warmup (step = W) and lr = min_lr at step = T.
    """
    if step < 0:
        raise ValueError(f"warmup_cosine: step must be >= 0, got {step!r}")
    if warmup_steps < 0 or total_steps < 1 or warmup_steps > total_steps:
        raise ValueError(f"warmup_cosine: need 0 <= warmup_steps <= total_steps and total_steps >= 1, "
                         f"got warmup_steps={warmup_steps!r}, total_steps={total_steps!r}")
    if base_lr < 0 or min_lr < 0 or min_lr > base_lr:
        raise ValueError(f"warmup_cosine: need 0 <= min_lr <= base_lr, got base_lr={base_lr!r}, min_lr={min_lr!r}")
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    if step >= total_steps:
        return float(min_lr)
    progress = (step - warmup_steps) / (total_steps - warmup_steps)       # 0 .. 1
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
