r"""Lesson 04: manual backprop — derive each backward pass, then check it against finite differences.

minidiff has no autograd. Every op is a pair: ``out, cache = op(inputs)`` and
``grads = op_backward(d_out, cache)``. The backward receives d_out = dL/d(out), the gradient of the
final scalar loss L with respect to the op's output, and returns dL/d(input) for each input: a
vector-Jacobian product, computed without ever forming the Jacobian. Chaining these products in
reverse order through a network is backpropagation.

The four derivations that carry a diffusion model:

Linear   y = x W^T + b,  x: (N, in), W: (out, in)
    dL/dx = dy W,   dL/dW = dy^T x,   dL/db = sum_n dy_n
    (each y_ni = sum_j x_nj W_ij + b_i is linear in every input; read off the coefficients)

Convolution as a matrix product (im2col)
    Copy every kh x kw window of the (padded) input into one column of a matrix col
    (C_in kh kw rows, B Ho Wo columns). Then the whole convolution is one matrix product,
        Y2d = W2d col,   W2d = W reshaped to (C_out, C_in kh kw),
    and its backward is linear's backward: dW2d = dY2d col^T, dcol = W2d^T dY2d. Finally
    col2im sends every entry of dcol back to the pixel it was copied from, adding where windows
    overlap (a pixel copied into 9 columns collects 9 gradient contributions). Which column
    holds which window is a free choice: the derivation orders them (b, oy, ox); minidiff's fast
    route orders them (oy, ox, b) for small images, because NumPy then copies long contiguous
    runs (minidiff/nn/fast/conv.py), and is tested equal.

GroupNorm   x_hat = (x - mu) / sqrt(var + eps) per (sample, group of channels),  y = gamma x_hat + beta
    dbeta = sum dy,   dgamma = sum dy x_hat,   g = dL/dx_hat = gamma dy
    mu and var depend on every x in the group, so dx is not just g / std:
        dx = (g - mean(g) - x_hat mean(g x_hat)) / sqrt(var + eps)
    (the two means remove the parts of g that would shift or rescale the whole group, which
    normalisation undoes anyway).

Attention   S = q k^T / sqrt(d),  P = softmax(S) (row-wise),  O = P v
    dv = P^T dO,  dP = dO v^T
    dS = P * (dP - rowsum(dP * P))           (softmax's Jacobian is diag(p) - p p^T)
    dq = dS k / sqrt(d),   dk = dS^T q / sqrt(d)

How do we know a backward is right? Pick a random upstream gradient dout and the scalar
L(x) = sum(f(x) * dout); then for each input entry, in float64,
    dL/dx_i ~ (L(x + h e_i) - L(x - h e_i)) / 2h,   h = 1e-6,
good to ~1e-9. A correct backward agrees to well below 1e-6; a wrong one is off by O(1).

What you will see: the derivations (printed from the code's own docstrings), the im2col
picture, a table of gradient-check errors for every op in minidiff (all < 1e-6), a deliberately
broken GroupNorm backward caught by the check, the speed of a convolution on this machine, and
"where is this gradient computed?": the chain of calls, file by file, through which a
cross-attention weight's and a GroupNorm gamma's gradients reach them (recorded, not typed).

Read beside: minidiff/nn/ops/linear.py, conv.py (im2col, conv2d, col2im), norm.py (group_norm and
layer_norm, one normalize_backward), attention.py (every pair, derivation beside the code; all
gathered in minidiff/nn/functional.py), minidiff/nn/reference.py (the loop versions),
minidiff/nn/gradcheck.py (the checker), minidiff/nn/trace.py (gradient_path). The faster routes an op may hand off to are in
minidiff/nn/fast/; MINIDIFF_FAST=0 runs the derivations you read here everywhere.

Run: python lessons/04_backprop.py [--quick] [--smoke] [--device cpu|gpu]
"""
# %% setup: `import minidiff` from this clone, as a script or in a notebook kernel (which has no __file__)
import sys, pathlib  # noqa: E401
_lessons = pathlib.Path(globals().get("__file__", "lessons/_")).resolve().parent
sys.path.insert(0, str(next((p for p in (_lessons.parent, pathlib.Path.cwd(), pathlib.Path.cwd().parent)
                             if (p / "minidiff" / "__init__.py").is_file()), _lessons.parent)))
import minidiff  # noqa: F401,E402  (before NumPy: it sets how OpenBLAS's threads wait, minidiff/__init__.py)

# %% settings
import dataclasses
import time

import numpy as np

from minidiff import backend
from minidiff.nn import functional as F
from minidiff.nn import reference
from minidiff.nn.gradcheck import gradcheck
from minidiff.nn.ops import norm
from minidiff.utils import output_dir, parse_lesson_args, pyplot, save_figure


@dataclasses.dataclass
class Settings:
    batch: int            # the timed convolution: (batch, channels, size, size), 3x3 kernel, padding 1
    channels: int
    size: int
    repeats: int


FULL = Settings(batch=64, channels=64, size=32, repeats=5)
QUICK = Settings(batch=16, channels=64, size=32, repeats=5)
SMOKE = Settings(batch=2, channels=8, size=8, repeats=2)

args = parse_lesson_args('Lesson 04: manual backprop')
settings = SMOKE if args.smoke else QUICK if args.quick else FULL
out = output_dir("04_backprop", args.out)
device = backend.device()
plt = pyplot()
TOL = 1e-6
host = np.random.default_rng(args.seed)


def randn(*shape):
    """float64 normal numbers on the current device (drawn on the host: the same on CPU and GPU)."""
    return backend.to_device(host.standard_normal(shape), device)


def show_derivation(op_backward):
    print(f"--- {op_backward.__name__} ---")
    print("\n".join("    " + line.strip() for line in op_backward.__doc__.strip().splitlines()))


print(f"device {device}; gradient checks in float64 with central differences, h = 1e-6")

# %% linear: the derivation, then the check
show_derivation(F.linear_backward)
errors = gradcheck(F.linear, {"x": randn(4, 3), "w": randn(5, 3), "b": randn(5)}, F.linear_backward)
print("linear: relative errors", {k: f"{v:.1e}" for k, v in errors.items()})
assert max(errors.values()) < TOL

# %% convolution = im2col + one matrix product
show_derivation(F.conv2d_backward)
x_small = randn(2, 3, 6, 5)
w_small = randn(4, 3, 3, 3)
fast, cache = F.conv2d(x_small, w_small, stride=2, padding=1)
naive = reference.conv2d(x_small, w_small, stride=2, padding=1)
col = cache[0]
print(f"x {tuple(x_small.shape)}, W {tuple(w_small.shape)}, stride 2, padding 1 -> y {tuple(fast.shape)}")
print(f"col has shape {tuple(col.shape)} = (C_in*kh*kw, B*Ho*Wo): one column per window, one GEMM "
      f"W2d {(4, 27)} @ col")
gap = float(np.abs(backend.to_numpy(fast) - naive).max())
print(f"im2col conv vs the six nested loops of nn/reference.py: max |difference| = {gap:.1e}")
assert gap < 1e-12

# the picture: a 5x5 image, a 3x3 kernel, stride 1: nine windows become nine columns
image = np.arange(1.0, 26.0).reshape(1, 1, 5, 5)
picture_col = backend.to_numpy(F.conv2d(image, np.ones((1, 1, 3, 3)))[1][0])      # (9, 9)
windows = {(0, 0): "tab:blue", (1, 2): "tab:red"}                                   # (oy, ox) -> colour
fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1, 1.7], "wspace": 0.3})
left.imshow(image[0, 0], cmap="Greys", alpha=0.25)
for (r, c), v in np.ndenumerate(image[0, 0]):
    left.text(c, r, f"{v:.0f}", ha="center", va="center", fontsize=11)
right.imshow(picture_col, cmap="Greys", alpha=0.25, aspect="auto")
for (r, c), v in np.ndenumerate(picture_col):
    right.text(c, r, f"{v:.0f}", ha="center", va="center", fontsize=9)
for (oy, ox), colour in windows.items():
    left.add_patch(plt.Rectangle((ox - 0.5, oy - 0.5), 3, 3, fill=False, ec=colour, lw=3))
    column = oy * 3 + ox
    right.add_patch(plt.Rectangle((column - 0.5, -0.5), 1, 9, fill=False, ec=colour, lw=3))
left.set_title("input 5x5, one channel:\ntwo of its nine 3x3 windows")
left.set_xlabel("x (column)")
left.set_ylabel("y (row)")
right.set_title("col = im2col(input), 9 x 9:\nwindow (oy, ox) becomes column 3 oy + ox")
right.set_xticks(range(9), [f"({oy},{ox})" for oy in range(3) for ox in range(3)], fontsize=8)
right.set_yticks(range(9), [f"({i},{j})" for i in range(3) for j in range(3)], fontsize=8)
right.set_xlabel("column = window position (oy, ox)")
right.set_ylabel("row = kernel offset (i, j)")
fig.suptitle("im2col: each window becomes a column, so the convolution is one matrix product W2d (C_out x 9) @ col",
             y=1.02)
save_figure(fig, out / "im2col.png")
assert np.array_equal(picture_col[:, 1 * 3 + 2], [8, 9, 10, 13, 14, 15, 18, 19, 20])   # the red window

# %% GroupNorm
show_derivation(F.group_norm_backward)
show_derivation(norm.normalize_backward)
errors = gradcheck(lambda x, g, b: F.group_norm(x, g, b, num_groups=2),
                   {"x": randn(2, 4, 3, 3) * 2 + 1, "gamma": randn(4), "beta": randn(4)}, F.group_norm_backward)
print("group_norm: relative errors", {k: f"{v:.1e}" for k, v in errors.items()})
assert max(errors.values()) < TOL


def group_norm_backward_missing_a_term(dy, cache):
    """A plausible mistake: treat mu and var as constants, dx = gamma dy / sqrt(var + eps)."""
    x_hat, inv_std, gamma = cache
    dx, dgamma, dbeta = F.group_norm_backward(dy, cache)
    B, G, N = x_hat.shape
    wrong_dx = (dy * gamma.reshape(1, -1, 1, 1)).reshape(B, G, N) * inv_std
    return wrong_dx.reshape(dy.shape), dgamma, dbeta


broken = gradcheck(lambda x, g, b: F.group_norm(x, g, b, num_groups=2),
                   {"x": randn(2, 4, 3, 3) * 2 + 1, "gamma": randn(4), "beta": randn(4)},
                   group_norm_backward_missing_a_term)
print(f"the same check on a backward that ignores how mu and var depend on x: relative error of dx "
      f"= {broken['x']:.2f} (caught), of dgamma = {broken['gamma']:.1e} (still right)")
assert broken["x"] > 1e-2 and broken["gamma"] < TOL

# %% attention
show_derivation(F.attention_backward)
causal = np.tril(np.ones((5, 5), bool))                    # query i may attend to keys 0..i
errors = gradcheck(F.attention, {"q": randn(2, 2, 5, 4), "k": randn(2, 2, 5, 4), "v": randn(2, 2, 5, 3),
                                 "mask": backend.to_device(causal, device)}, F.attention_backward)
print("attention (causal mask): relative errors", {k: f"{v:.1e}" for k, v in errors.items()})
assert max(errors.values()) < TOL
o_fast, _ = F.attention(*(randn(1, 2, 3, 4) for _ in range(3)))
assert o_fast.shape == (1, 2, 3, 4)

# %% every op in minidiff: the gradient-check table
ids = backend.to_device(np.array([[0, 3, 3], [1, 0, 3]]), device)
targets = backend.to_device(np.array([0, 2, 2, 1]), device)
padding_mask = backend.to_device(np.array([True, True, False])[None, None, None, :], device)
CHECKS = {
    "linear": (F.linear, {"x": randn(3, 4), "w": randn(2, 4), "b": randn(2)}, F.linear_backward),
    "conv2d 3x3 s1 p1": (lambda x, w, b: F.conv2d(x, w, b, 1, 1),
                         {"x": randn(2, 3, 5, 5), "w": randn(2, 3, 3, 3), "b": randn(2)}, F.conv2d_backward),
    "conv2d 4x4 s2 p1": (lambda x, w, b: F.conv2d(x, w, b, 2, 1),
                         {"x": randn(1, 2, 6, 6), "w": randn(3, 2, 4, 4), "b": randn(3)}, F.conv2d_backward),
    "conv_transpose2d s2": (lambda x, w, b: F.conv_transpose2d(x, w, b, 2, 1),
                            {"x": randn(1, 2, 3, 3), "w": randn(2, 3, 4, 4), "b": randn(3)},
                            F.conv_transpose2d_backward),
    "upsample_nearest2x": (F.upsample_nearest2x, {"x": randn(1, 2, 3, 3)}, F.upsample_nearest2x_backward),
    "avg_pool2d": (F.avg_pool2d, {"x": randn(1, 2, 4, 4)}, F.avg_pool2d_backward),
    "group_norm": (lambda x, g, b: F.group_norm(x, g, b, 2),
                   {"x": randn(2, 4, 3, 3), "gamma": randn(4), "beta": randn(4)}, F.group_norm_backward),
    "layer_norm": (F.layer_norm, {"x": randn(3, 6), "gamma": randn(6), "beta": randn(6)}, F.layer_norm_backward),
    "silu": (F.silu, {"x": randn(4, 5) * 3}, F.silu_backward),
    "gelu (erf)": (F.gelu, {"x": randn(4, 5) * 3}, F.gelu_backward),
    "gelu (tanh)": (lambda x: F.gelu(x, "tanh"), {"x": randn(4, 5) * 3}, F.gelu_backward),
    "geglu (a * gelu(gate))": (F.geglu, {"h": randn(4, 6) * 3}, F.geglu_backward),
    "softmax": (F.softmax, {"x": randn(3, 5)}, F.softmax_backward),
    "log_softmax": (F.log_softmax, {"x": randn(3, 5)}, F.log_softmax_backward),
    "attention": (F.attention, {"q": randn(2, 2, 3, 4), "k": randn(2, 2, 3, 4), "v": randn(2, 2, 3, 4)},
                  F.attention_backward),
    "attention (padding mask)": (lambda q, k, v: F.attention(q, k, v, padding_mask),
                                 {"q": randn(2, 2, 3, 4), "k": randn(2, 2, 3, 4), "v": randn(2, 2, 3, 4)},
                                 F.attention_backward),
    "embedding": (lambda w: F.embedding(ids, w), {"weight": randn(4, 3)}, F.embedding_backward),
    "dropout (p=0.3)": (lambda x: F.dropout(x, 0.3, np.random.default_rng(0)), {"x": randn(4, 5)},
                        F.dropout_backward),
    "mse_loss": (F.mse_loss, {"pred": randn(3, 4), "target": randn(3, 4)},
                 lambda d, cache: (F.mse_loss_backward(d, cache), None)),
    "cross_entropy": (lambda z: F.cross_entropy(z, targets), {"logits": randn(4, 3) * 2},
                      lambda d, cache: (F.cross_entropy_backward(d, cache),)),
}
table = {}
print(f"\n{'op':26s} {'input':8s} {'max relative error':>20s}")
for name, (forward, inputs, backward) in CHECKS.items():
    for input_name, error in gradcheck(forward, inputs, backward).items():
        table[f"{name}: {input_name}"] = error
        print(f"{name:26s} {input_name:8s} {error:20.2e}")
worst = max(table, key=table.get)
print(f"worst: {worst} at {table[worst]:.1e} (threshold {TOL:.0e}): every backward matches its forward")
assert table[worst] < TOL

fig, ax = plt.subplots(figsize=(8, 7))
names = list(table)
ax.barh(range(len(names)), [max(table[n], 1e-16) for n in names], color="tab:green")
ax.axvline(TOL, color="tab:red", ls="--", label=f"threshold {TOL:.0e}")
ax.set_xscale("log")
ax.set_yticks(range(len(names)), names, fontsize=7)
ax.invert_yaxis()
ax.set_xlabel("max relative error, analytic vs central-difference gradient (float64)")
ax.set_title("Gradient check of every minidiff op")
ax.legend()
save_figure(fig, out / "gradcheck_table.png")

# %% how fast is a convolution? (forward + backward, float32)
s = settings
x32 = backend.to_device(host.standard_normal((s.batch, s.channels, s.size, s.size)).astype(np.float32), device)
w32 = backend.to_device((host.standard_normal((s.channels, s.channels, 3, 3)) * 0.05).astype(np.float32), device)
b32 = backend.to_device(np.zeros(s.channels, np.float32), device)


def conv_step():
    y, conv_cache = F.conv2d(x32, w32, b32, padding=1)
    return F.conv2d_backward(y, conv_cache)


conv_step()                                                    # warm up (GPU: compile kernels)
times = []
for _ in range(s.repeats):
    backend.synchronize()
    start = time.perf_counter()
    grads = conv_step()
    backend.synchronize()
    times.append(time.perf_counter() - start)
seconds = float(np.median(times))
flops = 3 * 2 * s.batch * s.size * s.size * s.channels * s.channels * 9    # three GEMMs: Y, dW, dcol
print(f"conv2d 3x3, x ({s.batch}, {s.channels}, {s.size}, {s.size}) float32 on {device}: forward + backward "
      f"{seconds * 1e3:.1f} ms (median of {s.repeats}), {flops / seconds / 1e9:.1f} GFLOP/s in its three GEMMs")
assert all(g.dtype == np.float32 for g in grads) and seconds > 0

# %% where is this gradient computed? one weight's gradient, from the loss to p.grad
# A model's backward is spread over files. nn/trace.py runs one backward pass and writes down,
# for one parameter, the chain of calls through which its gradient arrives (the call stack at the
# moment it is added into p.grad, and the op that computed it). Nothing here is typed by hand.
from minidiff.models.unet import UNet, UNetConfig  # noqa: E402
from minidiff.nn import fast  # noqa: E402
from minidiff.nn.trace import gradient_path  # noqa: E402

unet = UNet(UNetConfig.tiny(), seed=args.seed)
x_in = host.standard_normal((2, 2, 8, 8)).astype(np.float32)
context = host.standard_normal((2, 5, 6)).astype(np.float32)
paths = {}
for name in ("mid_block.attentions.0.attn2.to_k.weight",        # a cross-attention weight: W_k of the text
             "down_blocks.1.resnets.0.norm1.weight"):           # a GroupNorm gamma inside a ResBlock
    with fast.disabled():                                       # the derivations, not the speed routes
        eps_pred = unet.forward(x_in, np.array([3, 500]), context)
        loss, loss_cache = F.mse_loss(eps_pred, x_in)
        paths[name] = gradient_path(unet, name, lambda: unet.backward(F.mse_loss_backward(1.0, loss_cache)))
    print(f"dL/d {name}:")
    for hop in paths[name]:
        print(f"    {hop}")
k_path, gamma_path = paths.values()
assert k_path[0] == "minidiff/models/unet.py:UNet.backward" and k_path[-1].endswith("Parameter.accumulate")
assert "minidiff/nn/layers.py:MultiHeadAttention.backward" in k_path and "minidiff/nn/ops/linear.py:linear_backward" in k_path
assert any(hop.startswith("minidiff/nn/ops/norm.py:group_norm") for hop in gamma_path)
print(f"the cross-attention weight's gradient crosses {len({h.split(':')[0] for h in k_path})} files in "
      f"{len(k_path)} hops; GroupNorm's gamma {len(gamma_path)} hops")

# %% Exercises
# 1. Break a backward and watch the check catch it: below, `broken_softmax_backward` forgets the
#    "- rowsum(dy * y)" term of softmax's Jacobian. Predict the relative error before running it.
#    (Set EXERCISE = "1" here, or run with --exercise 1 / MINIDIFF_EXERCISE=1.)
# 2. Write `my_linear_backward(dy, cache)` (the cache is (x2d, w, x_shape, has_bias), as in
#    nn/ops/linear.py; return dx, dw, db) from the derivation at the top; the lesson checks it
#    against finite differences.
# 3. Which hops would a *self*-attention weight's gradient take (attn1.to_q)? Write your guess as
#    a list in `my_guess`, then compare it with gradient_path (the lesson prints the difference).
import os  # noqa: E402

EXERCISE = os.environ.get("MINIDIFF_EXERCISE", "")
chosen = {int(n) for n in EXERCISE.replace(",", " ").split() if n.isdigit()}


def broken_softmax_backward(dy, cache):
    y, axis = cache[0], cache[1]
    return dy * y                                   # missing: - y * sum(dy * y, axis)


def my_linear_backward(dy, cache):
    raise NotImplementedError("exercise 2: dx = dy w, dw = dy^T x, db = sum over rows of dy")


my_guess = []

if 1 in chosen:
    logits = randn(3, 5)
    errors = gradcheck(lambda z: F.softmax(z, axis=-1), {"z": logits}, broken_softmax_backward, seed=1)
    print(f"exercise 1: broken softmax_backward, max relative error {max(errors.values()):.2f} (a correct one: < 1e-9)")
    assert max(errors.values()) > 1e-2, "the broken backward should be caught"
if 2 in chosen:
    xs, ws, bs = randn(4, 3), randn(2, 3), randn(2)
    try:
        errors = gradcheck(F.linear, {"x": xs, "w": ws, "b": bs}, my_linear_backward, seed=2)
        print(f"exercise 2: your linear_backward, max relative error {max(errors.values()):.1e}")
        assert max(errors.values()) < TOL, errors
    except NotImplementedError as exc:
        print(f"exercise 2: not written yet ({exc})")
if 3 in chosen:
    name = "mid_block.attentions.0.attn1.to_q.weight"
    with fast.disabled():
        eps_pred = unet.forward(x_in, np.array([3, 500]), context)
        loss, loss_cache = F.mse_loss(eps_pred, x_in)
        truth = gradient_path(unet, name, lambda: unet.backward(F.mse_loss_backward(1.0, loss_cache)))
    print(f"exercise 3: the path is {truth}\n  yours missed {[h for h in truth if h not in my_guess]}")
