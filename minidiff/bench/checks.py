"""``bench --check``: every fused kernel against the plain code it replaces.

Each case runs one op's forward and backward (or four AdamW steps) and returns its outputs by
name; :func:`compare_fused` runs a case with the fused kernels off and on and reports the largest
difference per output. On the CPU both runs take the plain route; on a GPU the second takes the
fused CuPy kernels, so ``python -m minidiff bench --check --device gpu`` checks them.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..nn import functional as F
from ..nn.module import Parameter
from ..optim import AdamW


def fused_cases():
    """[(name, run)] where run(xp, rng) -> dict of named output arrays of one op's forward and
    backward; comparing the dicts with fused kernels on and off checks a kernel."""
    def inputs(xp, rng, *shapes):
        return [xp.asarray(rng.standard_normal(s).astype(np.float32)) for s in shapes]

    def pair(forward, backward, *shapes, **options):
        def run(xp, rng):
            *args, dy = inputs(xp, rng, *shapes)
            y, cache = forward(*args, **options)
            grads = backward(dy, cache)
            grads = grads if isinstance(grads, tuple) else (grads,)
            return {"y": y, **{f"d{i}": g for i, g in enumerate(grads) if g is not None}}
        return run

    def attention(masked, head_dim=8):
        def run(xp, rng):
            q, k, v, dy = inputs(xp, rng, (2, 3, 7, head_dim), (2, 3, 5, head_dim), (2, 3, 5, 4), (2, 3, 7, 4))
            mask = None
            if masked:
                mask = xp.asarray(rng.random((2, 1, 7, 5)) < 0.7)
                mask[0, 0, 0] = False                             # one fully masked query row
            y, cache = F.attention(q, k, v, mask)
            grads = F.attention_backward(dy, cache)
            return dict(zip(("y", "P", "dq", "dk", "dv"), (y, F.attention_probs(cache)) + tuple(grads)))
        return run

    def adamw(xp, rng):
        data, grad, bias, bias_grad = inputs(xp, rng, (33, 17), (33, 17), (17,), (17,))
        params = [Parameter(data), Parameter(bias)]
        optimizer = AdamW(params, lr=1e-2, weight_decay=0.1)
        for step in range(4):                                     # fused: from step 2 on, one flat update
            optimizer.zero_grad()
            for p, g in zip(params, (grad, bias_grad)):
                p.accumulate(g * (step + 1))
            optimizer.step()
        return {"theta": params[0].data, "bias": params[1].data, "m": optimizer.exp_avg["0"],
                "v": optimizer.exp_avg_sq["1"]}

    x4 = (3, 8, 5, 6)
    return [
        ("silu", pair(F.silu, F.silu_backward, x4, x4)),
        ("gelu (erf)", pair(F.gelu, F.gelu_backward, x4, x4)),
        ("gelu (tanh)", pair(F.gelu, F.gelu_backward, x4, x4, approximate="tanh")),
        ("softmax", pair(F.softmax, F.softmax_backward, (4, 9, 33), (4, 9, 33))),
        ("attention (masked)", attention(masked=True)),
        ("attention (head dim 64)", attention(masked=False, head_dim=64)),
        ("group_norm", pair(F.group_norm, F.group_norm_backward, x4, (8,), (8,), x4, num_groups=4)),
        ("group_norm + SiLU", pair(F.group_norm_silu, F.group_norm_silu_backward, x4, (8,), (8,), x4,
                                   num_groups=2)),
        ("group_norm, 64x64 groups", pair(F.group_norm, F.group_norm_backward, (2, 8, 64, 64), (8,), (8,),
                                          (2, 8, 64, 64), num_groups=2)),
        ("layer_norm", pair(F.layer_norm, F.layer_norm_backward, (4, 7, 24), (24,), (24,), (4, 7, 24))),
        ("conv2d 3x3 pad 1 (im2col/col2im)", pair(F.conv2d, F.conv2d_backward, (2, 3, 9, 7), (5, 3, 3, 3),
                                                  (5,), (2, 5, 9, 7), padding=1)),
        ("conv2d 3x3 stride 2", pair(F.conv2d, F.conv2d_backward, (2, 4, 8, 8), (6, 4, 3, 3), (6,),
                                     (2, 6, 4, 4), stride=2, padding=1)),
        ("conv2d 1x1", pair(F.conv2d, F.conv2d_backward, (2, 6, 5, 5), (4, 6, 1, 1), (4,), (2, 4, 5, 5))),
        ("conv2d 3x3 on 17x17 (batch-first columns)", pair(F.conv2d, F.conv2d_backward, (2, 3, 17, 17),
                                                           (4, 3, 3, 3), (4,), (2, 4, 17, 17), padding=1)),
        ("conv_transpose2d", pair(F.conv_transpose2d, F.conv_transpose2d_backward, (2, 3, 4, 5),
                                  (3, 4, 3, 3), (4,), (2, 4, 8, 10), stride=2, padding=1, output_padding=1)),
        ("AdamW (4 steps)", adamw),
    ]


def compare_fused(run, seed=0):
    """{output name: max |fused - plain|} and the largest |plain| value, fused kernels on vs off."""
    xp = backend.get_xp()
    results = {}
    for fused in (False, True):
        previous = backend.set_fused(fused)
        try:
            results[fused] = {k: backend.to_numpy(v) for k, v in run(xp, np.random.default_rng(seed)).items()}
        finally:
            backend.set_fused(previous)
    plain, fused = results[False], results[True]
    diffs = {k: float(np.max(np.abs(fused[k].astype(np.float64) - plain[k]))) for k in plain}
    return diffs, max(float(np.max(np.abs(v))) for v in plain.values())


def run_checks(tolerance=1e-4):
    """Print max |fused - plain| per kernel output (relative to the output scale); True if all pass."""
    print("fused CuPy kernels vs the plain code (max abs difference per output):")
    ok = True
    records = []
    for name, run in fused_cases():
        diffs, scale = compare_fused(run)
        worst = max(diffs.values()) / max(scale, 1.0)
        passed = worst <= tolerance
        ok &= passed
        records.append({"kernel": name, "max_abs_diff": diffs, "scale": scale, "passed": passed})
        print(f"  {'ok  ' if passed else 'FAIL'} {name:<34} " + "  ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    return ok, records
