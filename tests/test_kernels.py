"""minidiff/nn/kernels.py: every fused CuPy kernel agrees with the plain code it replaces.

Three layers of checks:
* on a GPU (marked gpu): each case of ``bench.fused_cases()`` (forward and backward of an op, or
  AdamW steps) run with fused kernels on and off gives the same arrays to float32 rounding;
* everywhere: the switch (MINIDIFF_FUSED, set_fused, NumPy arrays never fused) and the wiring
  (each op calls its kernel exactly when the switch says so);
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
from minidiff import backend, bench
from minidiff.nn import functional as F
from minidiff.nn import host
from minidiff.nn import kernels
from minidiff.nn.module import Parameter
from minidiff.optim import AdamW

CASES = bench.fused_cases()
CASE_IDS = [name for name, _ in CASES]


# -- on a GPU: the real kernels --------------------------------------------------------------------
@gpu
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fused_kernel_matches_plain_code_on_the_gpu(case):
    backend.set_device("gpu")
    name, run = case
    diffs, scale = bench.compare_fused(run)
    assert max(diffs.values()) <= 1e-5 * max(scale, 1.0), f"{name}: max |fused - plain| = {diffs}"


# -- the switch ------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, enabled", [("0", False), ("off", False), ("1", True), ("", True)])
def test_minidiff_fused_environment_variable_sets_the_switch(value, enabled):
    out = subprocess.run([sys.executable, "-c", "from minidiff import backend; print(backend.fused_enabled())"],
                         env={"MINIDIFF_FUSED": value, "PATH": ""}, cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(enabled)


def test_set_fused_returns_the_previous_setting():
    first = backend.set_fused(False)
    try:
        assert backend.set_fused(True) is False
        assert backend.fused_enabled()
    finally:
        backend.set_fused(first)


def test_numpy_arrays_never_take_the_fused_path():
    previous = backend.set_fused(True)
    try:
        assert not backend.use_fused(np.ones(3, np.float32))
    finally:
        backend.set_fused(previous)


# -- the wiring: each op calls its kernel exactly when fused kernels are on --------------------------
ONES, ZEROS = np.ones(4), np.zeros(4)
WIRING = [  # (kernel, inputs(x) built with the plain code, the public op that should reach the kernel)
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
    monkeypatch.setattr(backend, "use_fused", lambda x: backend.fused_enabled() and x.dtype.char in "fd")


class Called(Exception):
    pass


@pytest.mark.parametrize("kernel, inputs, op", WIRING, ids=[k for k, _, _ in WIRING])
@pytest.mark.parametrize("fused", [True, False])
def test_op_calls_its_kernel_exactly_when_fused_kernels_are_on(kernel, inputs, op, fused, numpy_counts_as_gpu,
                                                               monkeypatch):
    x = np.random.default_rng(0).standard_normal((2, 4, 5, 3))
    previous = backend.set_fused(False)
    try:
        args = inputs(x)                                          # caches made by the plain code

        def called(*args, **kwargs):
            raise Called
        monkeypatch.setattr(kernels, kernel, called)
        backend.set_fused(fused)
        if fused:
            with pytest.raises(Called):
                op(*args)
        else:
            op(*args)
    finally:
        backend.set_fused(previous)


def test_adamw_calls_the_fused_update_once_per_parameter(numpy_counts_as_gpu, monkeypatch):
    updates = []
    monkeypatch.setattr(kernels, "adamw_update", lambda theta, *args: updates.append(theta.shape))
    params = [Parameter(np.ones((3, 2))), Parameter(np.ones(5))]
    for p in params:
        p.grad = np.ones_like(p.data)
    previous = backend.set_fused(True)
    try:
        AdamW(params).step()
    finally:
        backend.set_fused(previous)
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
    patch.setattr(backend, "use_fused", lambda x: backend.fused_enabled() and x.dtype.char in "fd")
    kernels._kernels.cache_clear()
    # NumPy arrays now take the fused branches, also inside nn/host.py's blocks; one thread, so
    # that two blocks never build (and compile) the stand-in kernels at once
    threads = host.set_threads(1)
    yield
    host.set_threads(threads)
    patch.undo()
    kernels._kernels.cache_clear()


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_kernel_body_matches_plain_code_when_compiled_for_the_cpu(case, dtype, tolerance, kernels_on_the_cpu):
    name, run = case
    cast = types.SimpleNamespace(asarray=lambda a: np.asarray(a).astype(dtype) if np.asarray(a).dtype.kind == "f"
                                 else np.asarray(a))
    try:
        diffs, scale = bench.compare_fused(lambda xp, rng: run(cast, rng))
    except NeedsAGPU:
        pytest.skip(f"{name}: a warp-level RawModule kernel, checked on a GPU only")
    assert max(diffs.values()) <= tolerance * max(scale, 1.0), f"{name} ({np.dtype(dtype)}): {diffs}"
