"""minidiff: Stable Diffusion rebuilt from scratch with NumPy (CPU) and CuPy (GPU), to be read.

Start with the lessons in ``lessons/`` and read the files they name beside them.
"""
__version__ = "0.1.0"

import os as _os

# OpenBLAS's worker threads wait 2^20 cycles after a product instead of 2^28, so that they leave
# the cores to minidiff's host threads soon (why and how measured: minidiff/nn/fast/blocks.py).
# Read when NumPy loads OpenBLAS, so it must come before the first numpy import; yours wins.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")
