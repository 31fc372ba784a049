"""minidiff: Stable Diffusion rebuilt from scratch with NumPy (CPU) and CuPy (GPU), to be read.

Start with the lessons in ``lessons/`` and read the files they name beside them.
"""
__version__ = "0.1.0"

import os as _os

# OpenBLAS's worker threads spin for ~0.1 s after every matrix product by default, holding the
# cores that minidiff's own host threads (nn/host.py) need for the elementwise work in between.
# 2^14 cycles of spinning is enough to bridge back-to-back products. Read once, when NumPy loads
# OpenBLAS, so it must come before the first numpy import; a value you set yourself wins.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "14")
