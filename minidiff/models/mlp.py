"""A time-conditioned MLP that predicts the noise eps in a noisy 2-D point x_t.

The smallest denoiser worth the name, for the toy data of lesson 03:

    e    = sinusoidal_embedding(t, E)                     (B,) -> (B, E)   which step we are at
    temb = W_t2 silu(W_t1 e)                              (B, E) -> (B, H)
    h_0  = W_in x_t + temb                                (B, 2) -> (B, H) time is *added* to the input
    h_k  = h_{k-1} + W_2 silu(W_1 LayerNorm(h_{k-1}))     k = 1..num_blocks (pre-norm residual blocks)
    eps_hat = W_out silu(LayerNorm(h_K))                  (B, H) -> (B, 2)

Training minimises || eps - eps_hat(x_t, t) ||^2 (see ``minidiff/diffusion/loss.py``); the
backward pass below mirrors the forward in reverse and returns dL/dx_t (the timestep is an
integer, so it has no gradient, but the time MLP's weights do).

Read beside: ``minidiff/nn/layers.py`` (Linear, LayerNorm, SiLU), ``minidiff/nn/functional.py``
(``sinusoidal_embedding``) and ``lessons/03_ddpm_2d.py``.
"""
from __future__ import annotations

import dataclasses
import numbers

import numpy as np

from ..checks import positive_int
from ..nn import functional as F
from ..nn.layers import LayerNorm, Linear, SiLU
from ..nn.module import Module


@dataclasses.dataclass
class MLPConfig:
    data_dim: int = 2            # size of a data point
    hidden_dim: int = 128        # width H of the residual stream
    num_blocks: int = 3          # residual blocks
    time_embed_dim: int = 64     # E: size of the sinusoidal time embedding
    max_period: float = 10000.0  # longest wavelength of the embedding (in timesteps)

    @classmethod
    def tiny(cls):
        """For gradient checks: a few hundred parameters."""
        return cls(hidden_dim=8, num_blocks=2, time_embed_dim=6)

    @classmethod
    def quick(cls):
        """Lesson 03 on a CPU: trains in well under a minute."""
        return cls(hidden_dim=128, num_blocks=3, time_embed_dim=64)

    @classmethod
    def full(cls):
        return cls(hidden_dim=256, num_blocks=4, time_embed_dim=128)

    def __post_init__(self):
        for name in ("data_dim", "hidden_dim", "num_blocks", "time_embed_dim"):
            setattr(self, name, positive_int("MLPConfig", name, getattr(self, name)))
        period = self.max_period
        if isinstance(period, bool) or not isinstance(period, numbers.Real) or not period > 0:
            raise ValueError(f"MLPConfig: max_period must be a positive number, got {period!r}")
        if self.time_embed_dim % 2:
            raise ValueError(f"MLPConfig: time_embed_dim must be even (sin and cos halves), got {self.time_embed_dim}")


class ResidualBlock(Module):
    """h + W_2 silu(W_1 LayerNorm(h)):  (B, H) -> (B, H)"""

    def __init__(self, dim, rng):
        self.norm = LayerNorm(dim)
        self.fc1 = Linear(dim, dim, rng=rng)
        self.act = SiLU()
        self.fc2 = Linear(dim, dim, rng=rng)

    def forward(self, h):
        return h + self.fc2(self.act(self.fc1(self.norm(h))))

    def backward(self, dout):
        # the residual path passes dout through unchanged; the branch adds its own gradient
        dbranch = self.norm.backward(self.fc1.backward(self.act.backward(self.fc2.backward(dout))))
        return dout + dbranch


class MLPDenoiser(Module):
    """eps_hat = model(x_t (B, data_dim), t (B,) integer steps) -> (B, data_dim)."""

    def __init__(self, config: MLPConfig | None = None, seed: int = 0):
        self.config = config or MLPConfig()
        c = self.config
        rng = np.random.default_rng(seed)
        self.time_fc1 = Linear(c.time_embed_dim, c.hidden_dim, rng=rng)
        self.time_act = SiLU()
        self.time_fc2 = Linear(c.hidden_dim, c.hidden_dim, rng=rng)
        self.in_proj = Linear(c.data_dim, c.hidden_dim, rng=rng)
        self.blocks = [ResidualBlock(c.hidden_dim, rng) for _ in range(c.num_blocks)]
        self.out_norm = LayerNorm(c.hidden_dim)
        self.out_act = SiLU()
        self.out_proj = Linear(c.hidden_dim, c.data_dim, rng=rng)

    def forward(self, x, t):
        c = self.config
        if x.ndim != 2 or x.shape[1] != c.data_dim:
            raise ValueError(f"MLPDenoiser: x must be (B, {c.data_dim}), got shape {tuple(x.shape)}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"MLPDenoiser: t must be ({x.shape[0]},), one step per sample, got shape {tuple(t.shape)}")
        # e = [cos(t w_i), sin(t w_i)],  w_i = max_period^(-i / (E/2))         (B, E)
        e = F.sinusoidal_embedding(t, c.time_embed_dim, max_period=c.max_period, dtype=x.dtype)
        temb = self.time_fc2(self.time_act(self.time_fc1(e)))        # (B, H)
        h = self.in_proj(x) + temb                                   # (B, H)
        for block in self.blocks:
            h = block(h)                                             # (B, H)
        return self.out_proj(self.out_act(self.out_norm(h)))         # (B, data_dim)

    def backward(self, dout):
        """dL/dx_t from dL/deps_hat; parameter gradients are added into each p.grad."""
        dh = self.out_norm.backward(self.out_act.backward(self.out_proj.backward(dout)))
        for block in reversed(self.blocks):
            dh = block.backward(dh)
        # forward was: h = in_proj(x) + temb, so both branches receive dh
        dtemb = dh
        self.time_fc1.backward(self.time_act.backward(self.time_fc2.backward(dtemb)))  # d e: t is discrete
        return self.in_proj.backward(dh)                             # (B, data_dim)


if __name__ == "__main__":
    model = MLPDenoiser(MLPConfig.quick(), seed=0)
    print(f"MLPDenoiser {model.config}: {model.num_parameters():,} parameters")
    for name, p in model.named_parameters()[:6]:
        print(f"  {name:20s} {tuple(p.shape)}")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 2)).astype(np.float32)
    t = np.array([0, 10, 100, 500, 999])
    eps_hat = model(x, t)
    print("x_t:\n", x.round(3), "\nt:", t, "\neps_hat:\n", eps_hat.round(3))
    model.zero_grad()
    dx = model.backward(np.ones_like(eps_hat))
    print("d(sum eps_hat)/dx_t:\n", dx.round(3))
