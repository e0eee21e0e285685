"""`x**2` of a NumPy scalar, computed over whole arrays: the floats gymnasium's scalar code gets.

gymnasium's Pendulum and Acrobot square NumPy scalars (`thdot**2`, `dtheta2**2`), which calls the C
library's `pow(x, 2)` (`powf` for float32); an array's `x**2` is `x*x`. The two differ when the exact
square lies within a hair of the midpoint between two floats: `x*x` rounds correctly and `pow` may
round the other way (glibc: pow within 0.52 ulp, powf within 0.82 ulp of a float32 rounded from an
almost exact double). Acrobot is chaotic, so one such ulp would grow into a different trajectory.

`square_like_scalar` computes `x*x` with its exact rounding error (Dekker's product; for float32 the
exact square in float64), and asks the scalar `**2` itself only for the few elements close enough to
a midpoint that `pow` could round differently: the result is the scalar's on any C library whose
`pow` is that accurate, and costs a few array passes.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

_SPLIT = 134217729.0  # 2**27 + 1: Veltkamp's split of a double into two 26-bit halves
_NEAR_MIDPOINT_64 = 0.48
"""An exact square this many ulps or more from `x*x` may come back from `pow` rounded the other way."""
_NEAR_MIDPOINT_32 = 0.49
"""The same for float32: `powf` rounds an almost exact double, so only near-ties can differ."""


def square_like_scalar(x: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:
    """Elementwise `x**2` equal to `type(x[i])(x[i])**2` (float64 or float32), i.e. libm's `pow`."""
    if x.dtype == np.float32:
        return _square32(x)
    if x.dtype != np.float64:
        raise TypeError(f"square_like_scalar takes float32 or float64 arrays, got {x.dtype}")
    hi = x * x
    c = _SPLIT * x
    xh = c - (c - x)
    xl = x - xh
    lo = ((xh * xh - hi) + 2.0 * xh * xl) + xl * xl  # hi + lo == x*x exactly (no overflow here)
    spacing = np.spacing(np.abs(hi))
    # At a power of two the floats below are twice as dense: ask pow there too.
    near = (np.abs(lo) >= _NEAR_MIDPOINT_64 * spacing) | (np.frexp(hi)[0] == 0.5) | ~np.isfinite(lo)
    if near.any():
        idx = np.flatnonzero(near)
        flat = hi.reshape(-1)
        for i, v in zip(idx.tolist(), x.reshape(-1)[idx].tolist(), strict=True):
            flat[i] = math.pow(v, 2)
    return hi


def _square32(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    exact = x.astype(np.float64) ** 2  # 24-bit halves: the float64 square is exact
    out = exact.astype(np.float32)
    err = np.abs(exact - out.astype(np.float64))
    spacing = np.spacing(np.abs(out)).astype(np.float64)
    near = (err >= _NEAR_MIDPOINT_32 * spacing) | (np.frexp(out)[0] == 0.5) | ~np.isfinite(out)
    if near.any():
        idx = np.flatnonzero(near)
        flat = out.reshape(-1)
        values = x.reshape(-1)[idx]
        for i, v in zip(idx.tolist(), values, strict=True):
            flat[i] = v**2  # a NumPy float32 scalar: powf, as gymnasium computes it
    return out
