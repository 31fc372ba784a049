"""Shared test fixtures: the backend parametrisation (NumPy always, CuPy where a GPU is usable)."""
import os

import numpy
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

from minidiff import backend  # noqa: E402

GPU = backend.gpu_available()
gpu = pytest.mark.skipif(not GPU, reason="needs CuPy and a CUDA device")

if GPU:
    import cupy
    BACKENDS = [numpy, pytest.param(cupy, marks=pytest.mark.gpu)]
else:
    BACKENDS = [numpy, pytest.param(None, marks=[pytest.mark.gpu, gpu])]


@pytest.fixture(params=BACKENDS, ids=["numpy", "cupy"])
def xp(request):
    """The array module under test: numpy, and cupy where a GPU is usable."""
    return request.param


@pytest.fixture(autouse=True)
def _cpu_device_by_default(monkeypatch):
    """Tests run on the CPU unless they ask for a device themselves."""
    backend.set_device(os.environ.get("MINIDIFF_TEST_DEVICE", "cpu"))
    yield
