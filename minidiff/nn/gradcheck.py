"""Finite-difference gradient checks: is a hand-written backward the derivative of its forward?

Pick a random upstream gradient dout (the same shape as the output) and look at the scalar
L(x) = sum(f(x) * dout). Its gradient is exactly what a backward pass returns when handed dout,
and each coordinate of it can be estimated with two more forward passes (central differences):

    dL/dx_i ~ sum((f(x + h e_i) - f(x - h e_i)) * dout) / 2h          error O(h^2)

In float64 with h = 1e-6 the estimate is good to ~1e-9 relative, so a correct backward agrees
to well under 1e-6, and a wrong one (a missing term, a transposed matrix) is off by O(1).
A random dout, rather than all ones, catches errors that cancel in a plain sum.

The error reported per array is a relative one, scaled by the largest gradient entry:

    rel_err = max|analytic - numeric| / max(max|analytic|, max|numeric|, floor)

The floor is what rounding alone can do to a central difference: L sums terms f_j dout_j, each
rounded to ~2e-16 of its size, and the difference is divided by 2h, so the estimate carries
noise up to noise = 2.2e-16 * sum|f dout| / h. A gradient that is itself small because its
terms cancel (a 1x1 kernel whose 8 products nearly sum to zero) would otherwise be judged
against that noise alone; floor = 1e6 * noise makes a disagreement at the noise level read as
1e-6. A real mistake (an error the size of a gradient entry) still reads as ~1.

Two entry points:

* ``gradcheck(fn, inputs, backward)`` for functional pairs (``fn`` returns ``(out, cache)`` and
  ``backward(dout, cache)`` the grads) or any function with a backward closure;
* ``check_module(module, inputs)`` for a ``Module``: its inputs and every parameter, with big
  parameters subsampled (64 random entries each by default) so a U-Net block checks in seconds.

Read beside: ``minidiff/nn/functional.py``, ``lessons/04_backprop.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..backend import get_array_module, to_numpy

TINY = 1e-30


def relative_error(analytic, numeric, floor=TINY) -> float:
    """max|a - n| / max(max|a|, max|n|, floor): 0 for a perfect match, ~1 for an unrelated one."""
    a, n = np.asarray(to_numpy(analytic), np.float64), np.asarray(to_numpy(numeric), np.float64)
    if a.size == 0:
        return 0.0
    scale = max(np.abs(a).max(), np.abs(n).max(), floor, TINY)
    return float(np.abs(a - n).max() / scale)


def _is_float_array(a) -> bool:
    return hasattr(a, "dtype") and hasattr(a, "shape") and a.dtype.kind == "f"


def _as_float64(a):
    """A C-contiguous float64 copy of a floating array (on its device), so the checker never
    perturbs the caller's arrays; anything else passes through."""
    return a.astype(np.float64, order="C", copy=True) if _is_float_array(a) else a


def _coordinates(shape, max_coords, rng):
    """Flat indices to check: all of them, or ``max_coords`` distinct random ones."""
    size = int(np.prod(shape))
    if max_coords is None or size <= max_coords:
        return np.arange(size)
    return np.sort(rng.choice(size, size=max_coords, replace=False))


def _contract(outputs, douts):
    """sum(f * dout) over every output array, as a Python float (float64)."""
    return float(sum(float((o * d).sum()) for o, d in zip(outputs, douts)))


def _noise_floor(outputs, douts, eps):
    """1e6 x the rounding noise of a central difference of sum(f * dout) (module docstring)."""
    magnitude = sum(float(abs(o * d).sum()) for o, d in zip(outputs, douts))
    return 1e6 * np.finfo(np.float64).eps * magnitude / eps


def _as_tuple(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _numeric_gradient(loss, array, coords, eps):
    """Central differences of loss() with respect to the given flat coordinates of ``array``
    (perturbed in place, restored after). Returns a host float64 vector, one entry per coordinate."""
    flat = array.reshape(-1)              # a view (array is C-contiguous): writing to it writes to array
    grads = np.empty(len(coords))
    for n, i in enumerate(coords):
        original = float(flat[i])
        flat[i] = original + eps
        plus = loss()
        flat[i] = original - eps
        minus = loss()
        flat[i] = original
        grads[n] = (plus - minus) / (2 * eps)
    return grads


def _pick(analytic, coords):
    return np.asarray(to_numpy(analytic), np.float64).reshape(-1)[coords]


def gradcheck(fn, inputs, backward, *, eps=1e-6, seed=0, max_coords=None, dout=None):
    """Compare analytic gradients with central differences, in float64.

    fn:        called as ``fn(*inputs)``; returns ``(out, cache)`` (a functional pair) or ``out``.
    inputs:    a sequence of arrays (named "x0", "x1", ...) or a dict name -> array. Floating
               arrays are copied to float64 and checked; anything else (None, integer ids, bool
               masks, ...) is passed through unchecked.
    backward:  ``backward(dout, cache)`` when fn returns (out, cache), else ``backward(dout)``;
               returns one grad per input, in order (None where there is none). Or a sequence of
               already computed grads, in which case ``dout`` must be the upstream gradient they
               were computed with.
    max_coords: check at most this many random entries per input (None: every entry).

    Returns {input name: relative error}. Example::

        errors = gradcheck(conv2d, {"x": x, "w": w, "b": b}, conv2d_backward)
        assert max(errors.values()) < 1e-6
    """
    names = list(inputs) if isinstance(inputs, dict) else [f"x{i}" for i in range(len(inputs))]
    values = [_as_float64(v) for v in (inputs.values() if isinstance(inputs, dict) else inputs)]
    rng = np.random.default_rng(seed)

    def run():
        """(out, cache) for a functional pair, (out,) for a plain function."""
        result = fn(*values)
        return result if isinstance(result, tuple) else (result,)

    out, *cache = run()
    xp = get_array_module(out)
    if dout is None:
        dout = xp.asarray(rng.standard_normal(out.shape))
    grads = _as_tuple(backward(dout, *cache) if callable(backward) else backward)
    floor = _noise_floor([out], [dout], eps)

    def loss():
        return _contract([run()[0]], [dout])

    errors = {}
    for name, value, grad in zip(names, values, grads):
        if not _is_float_array(value) or grad is None:
            continue
        if tuple(grad.shape) != tuple(value.shape):
            raise ValueError(f"gradcheck: the grad of {name} has shape {tuple(grad.shape)}, "
                             f"the input has {tuple(value.shape)}")
        coords = _coordinates(value.shape, max_coords, rng)
        errors[name] = relative_error(_pick(grad, coords), _numeric_gradient(loss, value, coords, eps), floor)
    return errors


@dataclass
class GradcheckRow:
    kind: str          # "input" or "param"
    name: str
    shape: tuple
    checked: int       # how many entries were compared
    max_abs_error: float
    rel_error: float


@dataclass
class GradcheckReport:
    """Per-input and per-parameter errors of ``check_module``; ``str(report)`` is a table."""
    rows: list = field(default_factory=list)

    @property
    def errors(self) -> dict:
        """{"input:x0": rel_err, "param:conv1.weight": rel_err, ...}"""
        return {f"{r.kind}:{r.name}": r.rel_error for r in self.rows}

    @property
    def max_error(self) -> float:
        return max((r.rel_error for r in self.rows), default=0.0)

    def passed(self, tol: float = 1e-6) -> bool:
        return self.max_error < tol

    def __str__(self):
        head = f"{'':6} {'name':34} {'shape':>18} {'checked':>8} {'max|a-n|':>10} {'rel err':>10}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(f"{r.kind:6} {r.name:34} {str(r.shape):>18} {r.checked:>8} "
                         f"{r.max_abs_error:10.2e} {r.rel_error:10.2e}")
        lines.append(f"max relative error: {self.max_error:.2e}")
        return "\n".join(lines)


def check_module(module, inputs, seed=0, *, eps=1e-6, max_coords=64):
    """Gradient-check a Module's backward: the grads it returns for its inputs and the grads it
    adds into every ``p.grad``, against central differences of ``module.forward``.

    inputs: a sequence of positional inputs (floating arrays are checked; integer ids, masks and
    None pass through). The module runs in training mode with its parameters temporarily in
    float64; both are restored afterwards. It must be deterministic (dropout p = 0).
    Returns a GradcheckReport (``print(report)`` shows the table, ``report.max_error``).
    """
    rng = np.random.default_rng(seed)
    named = module.named_parameters()
    originals = [(p, p.data, p.grad) for _, p in named]
    was_training = getattr(module, "training", True)
    inputs = [_as_float64(v) for v in _as_tuple(inputs)]
    try:
        for p, data, _ in originals:
            p.data = _as_float64(data)
        if hasattr(module, "train"):
            module.train(True)
        outputs = _as_tuple(module.forward(*inputs))
        xp = get_array_module(outputs[0])
        douts = [xp.asarray(rng.standard_normal(o.shape)) for o in outputs]
        module.zero_grad()
        input_grads = _as_tuple(module.backward(douts[0] if len(douts) == 1 else tuple(douts)))
        param_grads = [None if p.grad is None else p.grad.copy() for _, p in named]
        floor = _noise_floor(outputs, douts, eps)

        def loss():
            return _contract(_as_tuple(module.forward(*inputs)), douts)

        report = GradcheckReport()
        checks = [("input", f"x{i}", value, grad)
                  for i, (value, grad) in enumerate(zip(inputs, input_grads)) if _is_float_array(value)]
        checks += [("param", name, p.data, grad) for (name, p), grad in zip(named, param_grads)]
        for kind, name, value, grad in checks:
            coords = _coordinates(value.shape, max_coords, rng)
            numeric = _numeric_gradient(loss, value, coords, eps)
            analytic = np.zeros(len(coords)) if grad is None else _pick(grad, coords)
            report.rows.append(GradcheckRow(kind, name, tuple(value.shape), len(coords),
                                            float(np.abs(analytic - numeric).max(initial=0.0)),
                                            relative_error(analytic, numeric, floor)))
        return report
    finally:
        for p, data, grad in originals:
            p.data, p.grad = data, grad
        if hasattr(module, "train"):
            module.train(was_training)


if __name__ == "__main__":
    from . import functional as F
    rng = np.random.default_rng(0)
    inputs = {"x": rng.standard_normal((2, 3, 6, 6)), "w": rng.standard_normal((4, 3, 3, 3)),
              "b": rng.standard_normal(4)}
    errors = gradcheck(lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), inputs, F.conv2d_backward)
    print("conv2d (stride 2, padding 1) relative errors:", {k: f"{v:.1e}" for k, v in errors.items()})
    wrong = gradcheck(F.conv2d, inputs, lambda dy, cache: tuple(2 * g for g in F.conv2d_backward(dy, cache)))
    print("the same with every gradient doubled (a bug):", {k: f"{v:.2f}" for k, v in wrong.items()})
