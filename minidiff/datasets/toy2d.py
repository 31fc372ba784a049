"""Toy 2-D data sets for the first diffusion lessons: points you can plot and watch being denoised.

Every function takes ``(n, seed)`` (``seed``: an int or a NumPy Generator) and returns float32
``(n, 2)`` points scaled by a fixed constant so that each coordinate has a standard deviation of
about 1 (the same scale as the N(0, I) noise the forward process adds). Same seed, same points.
"""
from __future__ import annotations

import numpy as np


def _check_n(n):
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"toy2d: n must be a non-negative int, got {n!r}")


def swiss_roll(n: int, seed=0, noise: float = 0.25):
    """A 2-D spiral: t in [1.5 pi, 4.5 pi], point = t (cos t, sin t) + noise, centred, divided by 6.8."""
    _check_n(n)
    rng = np.random.default_rng(seed)   # a Generator passes through
    t = 1.5 * np.pi * (1 + 2 * rng.random(n))
    points = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) + noise * rng.standard_normal((n, 2))
    return ((points - np.array([2.0, 0.2])) / 6.8).astype(np.float32)


def two_moons(n: int, seed=0, noise: float = 0.06):
    """Two interleaved half circles (the upper one centred at 0, the lower at (1, 0.5)), centred."""
    _check_n(n)
    rng = np.random.default_rng(seed)   # a Generator passes through
    upper = rng.random(n) < 0.5
    angle = np.pi * rng.random(n)
    x = np.where(upper, np.cos(angle), 1 - np.cos(angle))
    y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle))
    points = np.stack([x - 0.5, y - 0.25], axis=1) + noise * rng.standard_normal((n, 2))
    return (points / np.array([0.87, 0.50])).astype(np.float32)


def eight_gaussians(n: int, seed=0, std: float = 0.1):
    """Eight small Gaussian blobs evenly spaced on a circle of radius sqrt(2)."""
    _check_n(n)
    rng = np.random.default_rng(seed)   # a Generator passes through
    angle = 2 * np.pi * rng.integers(0, 8, n) / 8
    centres = np.sqrt(2) * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return (centres + std * np.sqrt(2) * rng.standard_normal((n, 2))).astype(np.float32)


def checkerboard(n: int, seed=0):
    """Uniform points on the dark squares of a 4x4 checkerboard spanning [-2, 2]^2, divided by 1.15."""
    _check_n(n)
    rng = np.random.default_rng(seed)   # a Generator passes through
    x = 4 * rng.random(n) - 2
    # y lies in a unit cell in [-2, 2] chosen so that floor(x) + floor(y) is even
    y = rng.random(n) - 2 * rng.integers(0, 2, n) + np.floor(x) % 2
    return (np.stack([x, y], axis=1) / 1.15).astype(np.float32)


def circles(n: int, seed=0, noise: float = 0.04):
    """Two concentric rings (radius 1 and 0.5), each point on one of them + noise, times 1.78."""
    _check_n(n)
    rng = np.random.default_rng(seed)   # a Generator passes through
    radius = np.where(rng.random(n) < 0.5, 1.0, 0.5)
    angle = 2 * np.pi * rng.random(n)
    points = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return ((points + noise * rng.standard_normal((n, 2))) * 1.78).astype(np.float32)


TOY_DATASETS = {"swiss_roll": swiss_roll, "two_moons": two_moons, "eight_gaussians": eight_gaussians,
                "checkerboard": checkerboard, "circles": circles}


def sample_toy(name: str, n: int, seed=0):
    """``TOY_DATASETS[name](n, seed)`` with a clear error for an unknown name."""
    if name not in TOY_DATASETS:
        raise ValueError(f"toy2d: unknown data set {name!r}; choose one of {sorted(TOY_DATASETS)}")
    return TOY_DATASETS[name](n, seed)


if __name__ == "__main__":   # python -m minidiff.datasets.toy2d
    from ..utils import output_dir, pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, len(TOY_DATASETS), figsize=(4 * len(TOY_DATASETS), 4))
    for ax, name in zip(axes, TOY_DATASETS):
        points = sample_toy(name, 4000, seed=0)
        print(f"{name:16} mean {points.mean(0).round(2)}  std {points.std(0).round(2)}")
        ax.scatter(points[:, 0], points[:, 1], s=1)
        ax.set(title=name, xlim=(-3, 3), ylim=(-3, 3), aspect="equal", xlabel="x1", ylabel="x2")
    save_figure(fig, output_dir("") / "toy2d_demo.png")
