"""Shared references for the numerical tests: the closed-form damped, forced linear oscillator and the
least-squares fit of a convergence order."""

import numpy as np
import pytest


def oscillator(t, x0, v0, *, eps, k, a=0.0, w=0.0, t0=0.0):
    """Closed-form ``x(t), v(t)`` of ``eps x'' + x' = -k x + a cos(w t)``, ``x(t0) = x0``, ``x'(t0) = v0``.

    Elementwise in numpy broadcasting (``k`` may vary per feature). The forced part is the particular
    solution ``Re(A e^{i w t})`` with ``A = a / (k - eps w^2 + i w)``. The free part solves the characteristic
    equation ``eps r^2 + r + k = 0``: ``r = (-1 +- sqrt(1 - 4 eps k)) / (2 eps)``, complex (under-damped) or
    real (over-damped); ``x_h = c1 e^{r1 s} + c2 e^{r2 s}``, ``s = t - t0``, with ``c1 + c2 = x_h(t0)`` and
    ``r1 c1 + r2 c2 = v_h(t0)``. ``eps = 0`` is ``x' = -k x + a cos(w t)``. Critical damping is excluded.
    """
    x0, v0, k = (np.asarray(z, dtype=np.float64) for z in (x0, v0, k))
    amp = a / (k - eps * w**2 + 1j * w)
    xp0 = (amp * np.exp(1j * w * t0)).real
    vp0 = (1j * w * amp * np.exp(1j * w * t0)).real
    s = t - t0
    if eps == 0.0:
        xh = (x0 - xp0) * np.exp(-k * s)
        x = xh + (amp * np.exp(1j * w * t)).real
        return x, -k * x + a * np.cos(w * t)
    disc = np.sqrt((1.0 - 4.0 * eps * k).astype(complex))
    if np.any(disc == 0):
        raise ValueError("critical damping 4 eps k = 1 has a double root; pick another k")
    r1, r2 = (-1.0 + disc) / (2.0 * eps), (-1.0 - disc) / (2.0 * eps)
    xh0, vh0 = x0 - xp0, v0 - vp0
    c1, c2 = (vh0 - r2 * xh0) / (r1 - r2), (r1 * xh0 - vh0) / (r1 - r2)
    e1, e2, ep = np.exp(r1 * s), np.exp(r2 * s), amp * np.exp(1j * w * t)
    x = (c1 * e1 + c2 * e2 + ep).real
    v = (r1 * c1 * e1 + r2 * c2 * e2 + 1j * w * ep).real
    return x, v


def fitted_order(hs, errors):
    """Slope of ``log(error)`` against ``log(h)`` by least squares (``numpy.polyfit``, degree 1)."""
    slope, _ = np.polyfit(np.log(np.asarray(hs, dtype=np.float64)), np.log(np.asarray(errors)), 1)
    return float(slope)


@pytest.fixture
def closed_form():
    return oscillator


@pytest.fixture
def fit_order():
    return fitted_order
