"""Argument checks shared by every layer of minidiff (imports nothing from minidiff).

Each check raises one ``ValueError`` that names who asked, which argument, and what it got:

    positive_int("UNetConfig", "base_channels", 0)
    ValueError: UNetConfig: base_channels must be a positive integer, got 0
"""
from __future__ import annotations

import numbers


def positive_int(owner: str, name: str, value) -> int:
    """``value`` as an ``int`` if it is an integer >= 1 (``True`` is not an integer here)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return int(value)


def positive_ints(owner: str, name: str, values) -> tuple:
    """A non-empty sequence of positive integers, as a tuple of ``int``."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{owner}: {name} must be a sequence of positive integers, got {values!r}")
    values = tuple(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in values):
        raise ValueError(f"{owner}: {name} must be a non-empty sequence of positive integers, got {values!r}")
    return tuple(int(v) for v in values)


if __name__ == "__main__":
    print(positive_int("demo", "steps", 50))
    try:
        positive_int("demo", "steps", -3)
    except ValueError as exc:
        print(exc)
