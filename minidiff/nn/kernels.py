"""The old name of minidiff/nn/fast/kernels.py (the fused CuPy kernels)."""
import sys

from .fast import kernels

sys.modules[__name__] = kernels
