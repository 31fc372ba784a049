"""minidiff: Stable Diffusion rebuilt from scratch with NumPy (CPU) and CuPy (GPU), to be read.

Start with the lessons in ``lessons/`` and read the files they name beside them.
"""
__version__ = "0.1.0"
