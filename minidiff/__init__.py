"""minidiff: Stable Diffusion rebuilt from scratch with NumPy (CPU) and CuPy (GPU), to be read.

Start with the lessons in ``lessons/`` and read the files they name beside them.
"""
__version__ = "0.1.0"

import os as _os

# OpenBLAS's worker threads spin for 2^28 cycles (~0.1 s) after every matrix product by default,
# holding the core that minidiff's own host threads (nn/host.py) need for the elementwise work in
# between. 2^20 cycles (~0.4 ms) still bridges back-to-back products (2^14 was slower: the workers
# then fall asleep between products and take long to wake). Read once, when NumPy loads OpenBLAS,
# so it must come before the first numpy import; a value you set yourself wins.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")
