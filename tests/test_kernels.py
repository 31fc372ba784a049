"""minidiff/nn/fast/: every op's fast route agrees with its derivation, and the fused CuPy kernels
with the code they replace.

Four layers of checks:
* the two routes (NumPy, and CuPy where a GPU is usable): each case below, an op's forward and
  backward, run with the fast routes on and off (``fast.disabled()``) gives the same arrays to
  rounding, in float64 and float32, on shapes that take every branch (batch-last columns for
  small images, batch-first for large ones, stride and padding, 1x1 kernels, masks); a cache
  made by either route feeds the other route's backward;
* the switch (MINIDIFF_FAST, its old name MINIDIFF_FUSED, set_enabled, disabled, NumPy arrays
  never fused);
* the wiring: each op calls its kernel exactly when the fast routes are on;
* where g++ exists: the kernel bodies themselves, compiled as C++ and run over NumPy arrays by
  a small stand-in for cupy.ElementwiseKernel / ReductionKernel (broadcasting, reduction axes,
  scalars, raw arrays), so a wrong formula or index in a kernel fails on a CPU too.
"""
import ctypes
import hashlib
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import gpu
from minidiff import backend
from minidiff.backend import to_numpy
from minidiff.nn import fast
from minidiff.nn import functional as F
from minidiff.nn.fast import blocks, kernels
from minidiff.nn.module import Parameter
from minidiff.optim import AdamW


# -- the cases: one op's forward and backward (or AdamW's steps) -------------------------------------
class Pair:
    """forward(*inputs, **options) -> (y, cache); backward(dy, cache) -> grads. ``shapes``: the
    inputs' shapes, then dy's; ``extra(xp, rng)``: more inputs drawn after those (a mask)."""

    def __init__(self, forward, backward, *shapes, extra=None, **options):
        self.forward, self.backward, self.shapes, self.extra, self.options = forward, backward, shapes, extra, options

    def inputs(self, xp, rng, dtype):
        arrays = [xp.asarray(rng.standard_normal(s).astype(dtype)) for s in self.shapes]
        extra = self.extra(xp, rng) if self.extra else ()
        return arrays[:-1] + list(extra), arrays[-1]

    def run(self, xp, rng, dtype, forward_fast, backward_fast):
        """{name: host array} of y, what the cache holds for pictures, and the grads."""
        args, dy = self.inputs(xp, rng, dtype)
        with route(forward_fast):
            y, cache = self.forward(*args, **self.options)
        with route(backward_fast):
            grads = self.backward(dy, cache)
        grads = grads if isinstance(grads, tuple) else (grads,)
        out = {"y": y, **{f"d{i}": g for i, g in enumerate(grads) if g is not None}}
        if self.forward is F.attention:
            out["P"] = F.attention_probs(cache)
        return {k: to_numpy(v) for k, v in out.items()}


def route(on):
    """The fast routes on (True) or off (False) inside a with block."""
    return fast.disabled() if not on else _fast_on()


class _fast_on:
    def __enter__(self):
        self.previous = fast.set_enabled(True)

    def __exit__(self, *exc):
        fast.set_enabled(self.previous)


def _mask(per_sample):
    def draw(xp, rng):
        mask = rng.random((2, 1, 7, 5) if per_sample else (7, 5)) < 0.7
        mask[..., 0, :] = False                                   # one fully masked query row
        return (xp.asarray(mask),)
    return draw


def _adamw(xp, rng, dtype):
    data, grad, bias, bias_grad = (xp.asarray(rng.standard_normal(s).astype(dtype))
                                   for s in [(33, 17), (33, 17), (17,), (17,)])
    params = [Parameter(data), Parameter(bias)]
    optimizer = AdamW(params, lr=1e-2, weight_decay=0.1)
    for step in range(4):                                         # fused: from step 2 on, one flat update
        optimizer.zero_grad()
        for p, g in zip(params, (grad, bias_grad)):
            p.accumulate(g * (step + 1))
        optimizer.step()
    return {k: to_numpy(v) for k, v in {"theta": params[0].data, "bias": params[1].data,
                                         "m": optimizer.exp_avg["0"], "v": optimizer.exp_avg_sq["1"]}.items()}


x4 = (3, 8, 5, 6)
PAIRS = {
    "linear": Pair(F.linear, F.linear_backward, (2, 7, 6), (5, 6), (5,), (2, 7, 5)),
    "silu": Pair(F.silu, F.silu_backward, x4, x4),
    "gelu (erf)": Pair(F.gelu, F.gelu_backward, x4, x4),
    "gelu (tanh)": Pair(F.gelu, F.gelu_backward, x4, x4, approximate="tanh"),
    "geglu": Pair(F.geglu, F.geglu_backward, (3, 5, 12), (3, 5, 6)),
    "softmax": Pair(F.softmax, F.softmax_backward, (4, 9, 33), (4, 9, 33)),
    "softmax (axis 0)": Pair(F.softmax, F.softmax_backward, (4, 9, 3), (4, 9, 3), axis=0),
    "attention": Pair(F.attention, F.attention_backward, (2, 3, 7, 8), (2, 3, 5, 8), (2, 3, 5, 4), (2, 3, 7, 4)),
    "attention (causal-style mask)": Pair(F.attention, F.attention_backward, (2, 3, 7, 8), (2, 3, 5, 8),
                                          (2, 3, 5, 4), (2, 3, 7, 4), extra=_mask(per_sample=False)),
    "attention (mask per sample)": Pair(F.attention, F.attention_backward, (2, 3, 7, 8), (2, 3, 5, 8),
                                        (2, 3, 5, 4), (2, 3, 7, 4), extra=_mask(per_sample=True)),
    "attention (head dim 64)": Pair(F.attention, F.attention_backward, (2, 3, 7, 64), (2, 3, 5, 64),
                                    (2, 3, 5, 4), (2, 3, 7, 4)),
    "group_norm": Pair(F.group_norm, F.group_norm_backward, x4, (8,), (8,), x4, num_groups=4),
    "group_norm + SiLU": Pair(F.group_norm_silu, F.group_norm_silu_backward, x4, (8,), (8,), x4, num_groups=2),
    "group_norm, 64x64 groups": Pair(F.group_norm, F.group_norm_backward, (2, 8, 64, 64), (8,), (8,),
                                     (2, 8, 64, 64), num_groups=2),
    "group_norm, no spatial axes": Pair(F.group_norm, F.group_norm_backward, (3, 6), (6,), (6,), (3, 6), num_groups=3),
    "layer_norm": Pair(F.layer_norm, F.layer_norm_backward, (4, 7, 24), (24,), (24,), (4, 7, 24)),
    "conv2d 3x3 pad 1, 9x7 (batch-last columns)": Pair(F.conv2d, F.conv2d_backward, (2, 3, 9, 7), (5, 3, 3, 3),
                                                       (5,), (2, 5, 9, 7), padding=1),
    "conv2d 3x3 stride 2": Pair(F.conv2d, F.conv2d_backward, (2, 4, 8, 8), (6, 4, 3, 3), (6,), (2, 6, 4, 4),
                                stride=2, padding=1),
    "conv2d 4x4 stride 2 pad 2": Pair(F.conv2d, F.conv2d_backward, (2, 3, 7, 6), (4, 3, 4, 4), (4,), (2, 4, 4, 4),
                                      stride=2, padding=2),
    "conv2d 3x3 no padding": Pair(F.conv2d, F.conv2d_backward, (2, 3, 6, 6), (4, 3, 3, 3), (4,), (2, 4, 4, 4)),
    "conv2d 1x1": Pair(F.conv2d, F.conv2d_backward, (2, 6, 5, 5), (4, 6, 1, 1), (4,), (2, 4, 5, 5)),
    "conv2d 3x3 on 17x17 (batch-first columns)": Pair(F.conv2d, F.conv2d_backward, (2, 3, 17, 17), (4, 3, 3, 3),
                                                      (4,), (2, 4, 17, 17), padding=1),
    "conv_transpose2d stride 2": Pair(F.conv_transpose2d, F.conv_transpose2d_backward, (2, 3, 4, 5), (3, 4, 3, 3),
                                      (4,), (2, 4, 8, 10), stride=2, padding=1, output_padding=1),
    "conv_transpose2d 4x4 stride 2, 17x17": Pair(F.conv_transpose2d, F.conv_transpose2d_backward, (2, 3, 17, 17),
                                                 (3, 2, 4, 4), (2,), (2, 2, 34, 34), stride=2, padding=1),
    "conv_transpose2d 1x1": Pair(F.conv_transpose2d, F.conv_transpose2d_backward, (2, 3, 4, 4), (3, 2, 1, 1),
                                 (2,), (2, 2, 4, 4)),
}
TOLERANCE = {np.float64: 1e-12, np.float32: 2e-5}


def _differences(got, expected):
    """{output name: max |got - expected|} and the largest |expected| value."""
    diffs = {k: float(np.max(np.abs(got[k].astype(np.float64) - expected[k]), initial=0.0)) for k in expected}
    return diffs, max(float(np.max(np.abs(v), initial=0.0)) for v in expected.values())


# -- the two routes agree ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", list(PAIRS))
def test_fast_route_matches_the_derivation(xp, name, dtype):
    backend.set_device("cpu" if xp is np else "gpu")
    pair = PAIRS[name]
    derivation = pair.run(xp, np.random.default_rng(0), dtype, False, False)
    quick = pair.run(xp, np.random.default_rng(0), dtype, True, True)
    diffs, scale = _differences(quick, derivation)
    assert max(diffs.values()) <= TOLERANCE[dtype] * max(scale, 1.0), f"{name}: max |fast - derivation| = {diffs}"


@pytest.mark.parametrize("forward_fast", [True, False], ids=["fast forward", "derivation forward"])
@pytest.mark.parametrize("name", [n for n in PAIRS if "conv" in n or "norm" in n or n in ("silu", "geglu")])
def test_a_cache_from_either_route_feeds_the_other_backward(xp, name, forward_fast):
    backend.set_device("cpu" if xp is np else "gpu")
    pair = PAIRS[name]
    same = pair.run(xp, np.random.default_rng(0), np.float64, forward_fast, forward_fast)
    crossed = pair.run(xp, np.random.default_rng(0), np.float64, forward_fast, not forward_fast)
    diffs, scale = _differences(crossed, same)
    assert max(diffs.values()) <= 1e-12 * max(scale, 1.0), f"{name}: {diffs}"


def test_normal_cdf_in_blocks_matches_the_derivation():
    x = np.linspace(-12, 9, 7 * (blocks.BLOCK // 2 + 1)).astype(np.float32).reshape(-1, 7)
    with route(True):
        quick = F.normal_cdf(x)
    with fast.disabled():
        np.testing.assert_array_equal(quick, F.normal_cdf(x))


def test_the_batch_last_layout_is_taken_for_small_host_images():
    x = np.ones((2, 3, 8, 8))
    with route(True):
        assert F.conv2d(x, np.ones((4, 3, 3, 3)), padding=1)[1][-1] is True
        assert F.conv2d(np.ones((2, 3, 17, 17)), np.ones((4, 3, 3, 3)), padding=1)[1][-1] is False
    with fast.disabled():
        assert F.conv2d(x, np.ones((4, 3, 3, 3)), padding=1)[1][-1] is False


def test_adamw_fused_update_matches_the_plain_one_on_the_gpu():
    if not backend.gpu_available():
        pytest.skip("needs CuPy and a CUDA device")
    backend.set_device("gpu")
    import cupy
    with fast.disabled():
        plain = _adamw(cupy, np.random.default_rng(0), np.float32)
    with route(True):
        fused = _adamw(cupy, np.random.default_rng(0), np.float32)
    diffs, scale = _differences(fused, plain)
    assert max(diffs.values()) <= 1e-5 * max(scale, 1.0), diffs


# -- the switch ------------------------------------------------------------------------------------
@pytest.mark.parametrize("variables, enabled", [
    ({"MINIDIFF_FAST": "0"}, False), ({"MINIDIFF_FAST": "off"}, False), ({"MINIDIFF_FAST": "1"}, True),
    ({"MINIDIFF_FUSED": "0"}, False), ({"MINIDIFF_FUSED": ""}, True), ({}, True),
    ({"MINIDIFF_FAST": "1", "MINIDIFF_FUSED": "0"}, True),          # the new name wins
])
def test_minidiff_fast_environment_variable_sets_the_switch(variables, enabled):
    out = subprocess.run([sys.executable, "-c", "from minidiff import backend; print(backend.fast_enabled(), "
                          "backend.fused_enabled())"],
                         env={**variables, "PATH": ""}, cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(enabled)] * 2


def test_set_enabled_and_its_old_name_return_the_previous_setting():
    first = fast.set_enabled(False)
    try:
        assert fast.set_enabled(True) is False
        assert backend.set_fused(False) is True
        assert not fast.enabled(np.ones(3)) and not backend.fused_enabled()
        with route(True):
            assert fast.enabled(np.ones(3))
            with fast.disabled():
                assert not fast.enabled(np.ones(3))
            assert fast.enabled(np.ones(3))
    finally:
        fast.set_enabled(first)


def test_numpy_arrays_never_take_the_fused_kernels():
    with route(True):
        assert fast.enabled(np.ones(3, np.float32))
        assert not backend.use_fused(np.ones(3, np.float32))


# -- the wiring: each op calls its kernel exactly when the fast routes are on --------------------------
ONES, ZEROS = np.ones(4), np.zeros(4)
WIRING = [  # (kernel, inputs(x) built with the derivation, the public op that should reach the kernel)
    ("silu", lambda x: (x,), F.silu),
    ("silu_backward", lambda x: (x, F.silu(x)[1]), F.silu_backward),
    ("gelu", lambda x: (x, "tanh"), F.gelu),
    ("gelu_backward", lambda x: (x, F.gelu(x)[1]), F.gelu_backward),
    ("softmax_", lambda x: (x,), F.softmax),
    ("softmax_backward", lambda x: (x, F.softmax(x)[1]), F.softmax_backward),
    ("group_norm", lambda x: (x, ONES, ZEROS, 2), F.group_norm),
    ("group_norm_backward", lambda x: (x, F.group_norm(x, ONES, ZEROS, 2)[1]), F.group_norm_backward),
    ("group_norm_silu", lambda x: (x, ONES, ZEROS, 2), F.group_norm_silu),
    ("group_norm_silu_backward", lambda x: (x, F.group_norm_silu(x, ONES, ZEROS, 2)[1]), F.group_norm_silu_backward),
    ("attention", lambda x: (x, x, x), F.attention),
    ("layer_norm", lambda x: (x, ONES[:3], ZEROS[:3]), F.layer_norm),
    ("layer_norm_backward", lambda x: (x, F.layer_norm(x, ONES[:3], ZEROS[:3])[1]), F.layer_norm_backward),
    ("im2col", lambda x: (x, np.ones((2, 4, 3, 3))), F.conv2d),
    ("col2im", lambda x: (x, np.ones((4, 2, 3, 3))), F.conv_transpose2d),
]


@pytest.fixture
def numpy_counts_as_gpu(monkeypatch):
    """Let NumPy arrays take the fused branches (so the wiring can be seen without a GPU)."""
    monkeypatch.setattr(backend, "use_fused", lambda x: backend.fast_enabled() and x.dtype.char in "fd")


class Called(Exception):
    pass


@pytest.mark.parametrize("kernel, inputs, op", WIRING, ids=[k for k, _, _ in WIRING])
@pytest.mark.parametrize("on", [True, False], ids=["fast", "derivation"])
def test_op_calls_its_kernel_exactly_when_the_fast_routes_are_on(kernel, inputs, op, on, numpy_counts_as_gpu,
                                                                 monkeypatch):
    x = np.random.default_rng(0).standard_normal((2, 4, 5, 3))
    with fast.disabled():
        args = inputs(x)                                          # caches made by the derivation

    def called(*args, **kwargs):
        raise Called
    monkeypatch.setattr(kernels, kernel, called)
    with route(on):
        if on:
            with pytest.raises(Called):
                op(*args)
        else:
            op(*args)


def test_adamw_calls_the_fused_update_once_per_parameter(numpy_counts_as_gpu, monkeypatch):
    updates = []
    monkeypatch.setattr(kernels, "adamw_update", lambda theta, *args: updates.append(theta.shape))
    params = [Parameter(np.ones((3, 2))), Parameter(np.ones(5))]
    for p in params:
        p.grad = np.ones_like(p.data)
    with route(True):
        AdamW(params).step()
    assert updates == [(3, 2), (5,)]


# -- the kernel bodies on a CPU: a C++ stand-in for CuPy's two kernel classes ------------------------
_CTYPES = {np.dtype(np.float32): ("float", ctypes.c_float), np.dtype(np.float64): ("double", ctypes.c_double),
           np.dtype(np.int32): ("int", ctypes.c_int), np.dtype(bool): ("bool", ctypes.c_bool)}
_HEADER = "#include <cmath>\n#include <cstddef>\n#define __device__\nusing namespace std;\n"


def _params(spec):
    """'raw T x, int32 n' -> [(raw, type, name)]"""
    out = []
    for item in spec.split(","):
        words = item.split()
        out.append((words[0] == "raw", words[-2], words[-1]))
    return out


def _compile(source, name, build_dir):
    so = build_dir / f"{name}_{hashlib.sha1(source.encode()).hexdigest()[:12]}.so"
    if not so.exists():
        cpp = so.with_suffix(".cpp")
        cpp.write_text(source)
        done = subprocess.run(["g++", "-O1", "-shared", "-fPIC", "-o", str(so), str(cpp)],
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"g++ could not compile {cpp}:\n{done.stderr[-3000:]}")
    return getattr(ctypes.CDLL(str(so)), name)


def _scalar_argument(value, declared, T):
    dtype = T if declared == "T" else np.dtype(declared)
    return _CTYPES[dtype][1](value)


class _Elementwise:
    """cupy.ElementwiseKernel semantics: non-raw arrays broadcast, raw ones indexed by their flat
    C-order index, outputs allocated (or given, and written back), scalars cast to their type."""

    def __init__(self, build_dir, in_params, out_params, operation, name, preamble=""):
        self.build_dir, self.ins, self.outs = build_dir, _params(in_params), _params(out_params)
        self.operation, self.name, self.preamble = operation, name, preamble

    def __call__(self, *args, size=None):
        n_in = len(self.ins)
        T = next(a.dtype for (_, t, _), a in zip(self.ins + self.outs, args) if t == "T" and hasattr(a, "dtype"))
        arrays = [a for (raw, _, _), a in zip(self.ins + self.outs, args) if isinstance(a, np.ndarray) and not raw]
        shape = np.broadcast_shapes(*[a.shape for a in arrays])
        outs = list(args[n_in:]) or [np.empty(shape, T) for _ in self.outs]
        ctype = _CTYPES[T][0]
        declarations, bindings, call_args, written = [], [], [], []
        for (raw, declared, name), a in zip(self.ins + self.outs, list(args[:n_in]) + outs):
            const = "" if any(a is o for o in outs) else "const "
            if isinstance(a, np.ndarray):
                buffer = np.ascontiguousarray(a if raw else np.broadcast_to(a, shape)).copy()
                element = "T" if declared == "T" else _CTYPES[np.dtype(declared)][0]
                if raw:
                    declarations.append(f"{const}{element}* {name}")
                else:
                    declarations.append(f"{const}{element}* _raw_{name}")
                    bindings.append(f"{const}{element}& {name} = _raw_{name}[i];")
                call_args.append(buffer.ctypes.data_as(ctypes.c_void_p))
                if not const:
                    written.append((a, buffer))
            else:
                declarations.append(f"{'T' if declared == 'T' else _CTYPES[np.dtype(declared)][0]} {name}")
                call_args.append(_scalar_argument(a, declared, T))
        fname = f"{self.name}_{ctype}"
        source = (f"{_HEADER}typedef {ctype} T;\n{self.preamble}\nextern \"C\" void {fname}("
                  f"{', '.join(declarations)}, ptrdiff_t n) {{\n for (ptrdiff_t i = 0; i < n; ++i) {{\n"
                  f"  {' '.join(bindings)}\n  {self.operation}\n }}\n}}\n")
        size = int(np.prod(shape)) if size is None else size
        _compile(source, fname, self.build_dir)(*call_args, ctypes.c_longlong(size))
        for a, buffer in written:
            a[...] = buffer
        return outs[0] if len(outs) == 1 else tuple(outs)


class _Reduction:
    """cupy.ReductionKernel semantics: inputs broadcast, map -> reduce over ``axis`` -> post-map,
    with _in_ind.size() / _out_ind.size() the sizes before and after."""

    def __init__(self, build_dir, in_params, out_params, map_expr, reduce_expr, post_map_expr, identity, name,
                 preamble=""):
        self.build_dir, self.ins, self.out = build_dir, _params(in_params), _params(out_params)[0][2]
        self.map, self.reduce, self.post, self.identity = map_expr, reduce_expr, post_map_expr, identity
        self.name, self.preamble = name, preamble

    def __call__(self, *args, axis=None, keepdims=False):
        T = next(a.dtype for a in args if isinstance(a, np.ndarray))
        shape = np.broadcast_shapes(*[a.shape for a in args if isinstance(a, np.ndarray)])
        axes = tuple(range(len(shape))) if axis is None else tuple(np.atleast_1d(axis) % len(shape))
        kept = [d for d in range(len(shape)) if d not in axes]
        rows, length = int(np.prod([shape[d] for d in kept])), int(np.prod([shape[d] for d in axes]))
        ctype = _CTYPES[T][0]
        declarations, loads, call_args = [], [], []
        for (_, declared, name), a in zip(self.ins, args):
            if isinstance(a, np.ndarray):
                moved = np.transpose(np.broadcast_to(a, shape), kept + list(axes))
                buffer = np.ascontiguousarray(moved).reshape(rows, length)
                call_args.append(buffer.ctypes.data_as(ctypes.c_void_p))
                declarations.append(f"const T* _raw_{name}")
                loads.append(f"const T {name} = _raw_{name}[r * {length} + j];")
            else:
                declarations.append(f"T {name}")
                call_args.append(_scalar_argument(a, declared, T))
        out = np.empty(rows, T)
        fname = f"{self.name}_{ctype}_{rows}_{length}"
        source = (f"{_HEADER}typedef {ctype} T;\n{self.preamble}\n"
                  "struct Indexer { ptrdiff_t n; ptrdiff_t size() const { return n; } };\n"
                  f"#define REDUCE(a, b) ({self.reduce})\n#define POST_MAP(a) ({self.post})\n"
                  f"extern \"C\" void {fname}({', '.join(declarations)}, T* _raw_out) {{\n"
                  f" Indexer _in_ind{{(ptrdiff_t){rows} * {length}}}, _out_ind{{{rows}}};\n"
                  f" for (ptrdiff_t r = 0; r < {rows}; ++r) {{\n  T _s = T({self.identity});\n"
                  f"  for (ptrdiff_t j = 0; j < {length}; ++j) {{ {' '.join(loads)} _s = REDUCE(_s, T({self.map})); }}\n"
                  f"  T& {self.out} = _raw_out[r];\n  POST_MAP(_s);\n }}\n}}\n")
        _compile(source, fname, self.build_dir)(*call_args, out.ctypes.data_as(ctypes.c_void_p))
        return out.reshape(tuple(1 if d in axes else shape[d] for d in range(len(shape))) if keepdims
                           else tuple(shape[d] for d in kept))


class NeedsAGPU(Exception):
    pass


def _needs_a_gpu(*args, **kwargs):
    """RawModule kernels use warp shuffles, which this one-thread stand-in cannot run."""
    raise NeedsAGPU


@pytest.fixture(scope="module")
def kernels_on_the_cpu(tmp_path_factory):
    """kernels.py's own kernel bodies, run by the C++ stand-in over NumPy arrays."""
    if shutil.which("g++") is None:
        pytest.skip("needs g++ to compile the kernel bodies for the CPU")
    if backend.gpu_available():
        # the stand-in replaces CuPy only where kernels.py asks backend for it; with a real GPU,
        # kernels built earlier in the session hold the real module and mix with the stand-in
        pytest.skip("a GPU is here: the real kernels are compared with the plain code instead")
    build_dir = tmp_path_factory.mktemp("kernels")
    fake_cupy = types.SimpleNamespace(
        ElementwiseKernel=lambda *a, **k: _Elementwise(build_dir, *a, **k),
        ReductionKernel=lambda *a, **k: _Reduction(build_dir, *a, **k),
        RawModule=_needs_a_gpu, empty=np.empty, ones=np.ones, ascontiguousarray=np.ascontiguousarray,
        broadcast_to=np.broadcast_to)
    patch = pytest.MonkeyPatch()
    patch.setattr(backend, "cupy_module", lambda: fake_cupy)
    patch.setattr(backend, "use_fused", lambda x: backend.fast_enabled() and x.dtype.char in "fd")
    kernels._kernels.cache_clear()
    # NumPy arrays now take the fused branches, also inside nn/fast/blocks.py's blocks; one thread,
    # so that two blocks never build (and compile) the stand-in kernels at once
    threads = blocks.set_threads(1)
    yield
    blocks.set_threads(threads)
    patch.undo()
    kernels._kernels.cache_clear()


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-12), (np.float32, 1e-5)], ids=["float64", "float32"])
@pytest.mark.parametrize("name", list(PAIRS) + ["AdamW (4 steps)"])
def test_kernel_body_matches_the_derivation_when_compiled_for_the_cpu(name, dtype, tolerance, kernels_on_the_cpu):
    try:
        if name == "AdamW (4 steps)":
            with fast.disabled():
                plain = _adamw(np, np.random.default_rng(0), dtype)
            with route(True):
                fused = _adamw(np, np.random.default_rng(0), dtype)
        else:
            plain = PAIRS[name].run(np, np.random.default_rng(0), dtype, False, False)
            fused = PAIRS[name].run(np, np.random.default_rng(0), dtype, True, True)
    except NeedsAGPU:
        pytest.skip(f"{name}: a warp-level RawModule kernel, checked on a GPU only")
    diffs, scale = _differences(fused, plain)
    assert max(diffs.values()) <= tolerance * max(scale, 1.0), f"{name} ({np.dtype(dtype)}): {diffs}"
