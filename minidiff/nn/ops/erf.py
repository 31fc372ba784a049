"""erf and the normal CDF, Phi, as rational approximations (NumPy has no erf).

Coefficients from S. L. Moshier's Cephes library (ndtr.c), W. J. Cody-style:

    erf(x)  = x T(x^2) / U(x^2)              |x| < 1
    erfc(x) = exp(-x^2) P(x) / Q(x)          1 <= x < 8
    erfc(x) = exp(-x^2) R(x) / S(x)          x >= 8          (U, Q, S have a leading 1 not stored)

Absolute error below 1e-14 in float64 (checked against math.erf in tests/test_functional.py).
float32 has its own one-formula tail (Numerical Recipes' erfcc, a Chebyshev fit with fractional
error below 1.2e-7): t = 1 / (1 + z/2),  erfc(z) = t exp(-z^2 + P(t)).
"""
from __future__ import annotations

import math

import numpy as np

from ...backend import get_array_module

_ERF_T = (9.60497373987051638749E0, 9.00260197203842689217E1, 2.23200534594684319226E3,
          7.00332514112805075473E3, 5.55923013010394962768E4)
_ERF_U = (3.35617141647503099647E1, 5.21357949780152679795E2, 4.59432382970980127987E3,
          2.26290000613890934246E4, 4.92673942608635921086E4)
_ERFC_P = (2.46196981473530512524E-10, 5.64189564831068821977E-1, 7.46321056442269912687E0,
           4.86371970985681366614E1, 1.96520832956077098242E2, 5.26445194995477358631E2,
           9.34528527171957607540E2, 1.02755188689515710272E3, 5.57535335369399327526E2)
_ERFC_Q = (1.32281951154744992508E1, 8.67072140885989742329E1, 3.54937778887819891062E2,
           9.75708501743205489753E2, 1.82390916687909736289E3, 2.24633760818710981792E3,
           1.65666309194161350182E3, 5.57535340817727675546E2)
_ERFC_R = (5.64189583547755073984E-1, 1.27536670759978104416E0, 5.01905042251180477414E0,
           6.16021097993053585195E0, 7.40974269950448939160E0, 2.97886665372100240670E0)
_ERFC_S = (2.26052863220117276590E0, 9.39603524938001434673E0, 1.20489539808096656605E1,
           1.70814450747565897222E1, 9.60896809063285878198E0, 3.36907645100081516050E0)
_ERFC_FLOAT32 = (0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806,
                 0.09678418, 0.37409196, 1.00002368, -1.26551223)


def _polynomial(z, coefficients, leading_one=False):
    """Horner's rule, highest power first: c_0 z^n + c_1 z^(n-1) + ... + c_n,
    with an extra leading 1 * z^(n+1) when ``leading_one`` (Cephes' p1evl)."""
    coefficients = ((1.0,) if leading_one else ()) + tuple(coefficients)
    result = coefficients[0] * z + coefficients[1]
    for c in coefficients[2:]:
        result *= z
        result += c
    return result


def erfc_tail(z):
    """erfc(z) for z >= 1 (float64, Cephes): exp(-z^2) P(z) / Q(z) below 8, exp(-z^2) R(z) / S(z)
    from 8 on. Computed from exp(-z^2) directly, so it keeps its relative accuracy where
    1 - erf(z) would be rounding error. (Entries below 1 get numbers the callers discard.)"""
    xp = get_array_module(z)
    return xp.exp(-z * z) * xp.where(
        z < 8.0, _polynomial(z, _ERFC_P) / _polynomial(z, _ERFC_Q, leading_one=True),
        _polynomial(z, _ERFC_R) / _polynomial(z, _ERFC_S, leading_one=True))


def erf(x):
    """The error function erf(x) = 2/sqrt(pi) int_0^x exp(-t^2) dt, elementwise, in x's dtype.

    Accurate to ~1e-14 in float64, so that gelu's exact derivative Phi(x) + x phi(x) matches
    finite differences of gelu itself.
    """
    xp = get_array_module(x)
    x = xp.clip(x, -8.0, 8.0)                                 # erf(8) = 1 - 1e-29: 1 in float64
    a = xp.abs(x)
    z = x * x
    near_zero = x * _polynomial(z, _ERF_T) / _polynomial(z, _ERF_U, leading_one=True)
    away = xp.sign(x) * (1.0 - erfc_tail(a))                 # erf(x) = sign(x) (1 - erfc(|x|))
    return xp.where(a < 1.0, near_zero, away)


def normal_cdf_float64(x):
    """Phi(x) with e = erfc(|x| / sqrt 2) / 2:  Phi(x) = 1 - e for x >= 0 and e for x < 0.

    e is 1 - erf(z) near 0, where nothing cancels, and the tail formulas beyond, so that Phi keeps
    its relative accuracy far into the lower tail (Phi(-8) = 6e-16, where 1 + erf(x / sqrt 2)
    would be pure rounding error, and so would its finite differences).
    """
    xp = get_array_module(x)
    z = xp.abs(x) * (1.0 / math.sqrt(2.0))
    tail = 0.5 * xp.where(z < 1.0, 1.0 - erf(z), erfc_tail(xp.maximum(z, 1.0)))
    return xp.where(x >= 0, 1.0 - tail, tail)


def normal_cdf_float32(x):
    """Phi(x) as above, with e from the float32 formula: one short formula covers every x to
    float32's precision, also deep in the lower tail."""
    xp = get_array_module(x)
    z = xp.abs(x) * np.float32(1.0 / math.sqrt(2.0))
    t = 1.0 / (1.0 + 0.5 * z)
    exponent = _polynomial(t, _ERFC_FLOAT32)
    exponent -= z * z                                         # -z^2 + P(t)
    tail = xp.exp(exponent, out=exponent)
    tail *= 0.5 * t                                           # e = erfc(z) / 2
    return xp.where(x >= 0, 1.0 - tail, tail)
