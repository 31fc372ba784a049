"""Argument checks for the ops: one clear line naming the op, the values, and what is allowed."""
from __future__ import annotations

import numpy as np

from ...checks import positive_int  # noqa: F401  (re-exported for the ops)


def floats(op, **arrays):
    """All given arrays (None skipped) share one floating dtype: no silent float32 -> float64."""
    named = [(name, a) for name, a in arrays.items() if a is not None]
    first_name, first = named[0]
    if first.dtype.kind != "f":
        raise ValueError(f"{op}: {first_name} must be a floating-point array, got dtype {first.dtype}")
    for name, a in named[1:]:
        if a.dtype != first.dtype:
            raise ValueError(f"{op}: {name} has dtype {a.dtype} but {first_name} has dtype {first.dtype}; "
                             f"cast one so they match (float32 to train, float64 to check gradients)")


def ndim(op, name, a, axes, layout):
    if a.ndim != axes:
        raise ValueError(f"{op}: {name} must be {layout} ({axes} axes), got shape {tuple(a.shape)}")


def vector(op, name, a, size, what):
    if a is not None and tuple(a.shape) != (size,):
        raise ValueError(f"{op}: {name} must have shape ({size},) (one per {what}), got {tuple(a.shape)}")


def int_at_least(op, name, value, low):
    """An integer >= low, for the bounds other than 1 (positive_int is the check for >= 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{op}: {name} must be an integer >= {low}, got {value!r}")
    return int(value)


def broadcasts_to(shape, target) -> bool:
    try:
        return np.broadcast_shapes(shape, target) == tuple(target)
    except ValueError:
        return False


def index_array(op, name, ids, num_classes, xp):
    """Integer ids as an array of xp; the range is checked for host arrays (on a GPU that would be
    a synchronisation, so device ids are trusted)."""
    host = isinstance(ids, (list, tuple, int, np.integer, np.ndarray))
    ids = xp.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"{op}: {name} must be integers, got dtype {ids.dtype}")
    if host and ids.size and (int(ids.min()) < 0 or int(ids.max()) >= num_classes):
        raise ValueError(f"{op}: {name} must lie in [0, {num_classes}), "
                         f"got values from {int(ids.min())} to {int(ids.max())}")
    return ids
