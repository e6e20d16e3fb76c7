"""Claim 2, finite precision (Sander et al., ICML 2021, section 3.1; Maclaurin, Duvenaud, Adams 2015).

Each inverse layer divides the velocity by ``gamma``, so floating-point reversal amplifies the rounding
errors of the forward pass by about ``1/gamma`` per layer: the drift of the reconstructed input grows like
``gamma^{-N}``, i.e. ``log(drift)`` is linear in the depth ``N`` with slope ``log(1/gamma)``. Equivalently,
each layer destroys about ``log2(1/gamma)`` bits per element, which is what an exact reversal has to store.

``verify`` measures the reconstruction drift ``|x_0' - x_0| / |x_0|`` (median over a batch of inputs) of
``MomentumResNet.inverse`` against the depth, fits ``log drift`` against ``N`` by least squares, and compares
the slope with ``log(1/gamma)``; residual functions are small (``||J_f|| << 1``) so that the damping, not
``f``, governs the amplification. It also checks that the memory-free gradient's drift guard fires: a
``ReconstructionDriftWarning`` (or, with ``on_drift="raise"``, a ``ReconstructionDriftError``) past
``drift_tol``, and nothing below it.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch
from torch import nn

import ode_momentum as om
from ode_momentum.analysis import ClaimReport

CLAIM = "2. Finite precision: float reversal amplifies rounding by about 1/gamma per layer"

# Fitted slope of log(drift) against N over log(1/gamma): measured within 2% (float64, gamma 0.5 and 0.8,
# float32, gamma 0.9); 10% leaves room for other seeds and BLAS reduction orders.
SLOPE_RTOL = 0.10
# Residual weights are scaled by this, so ||J_f|| is about 0.1: the amplification is the damping's.
WEAK_GAIN = 0.1
WIDTH, BATCH = 16, 256

# (gamma, dtype, depths): the drift spans from the rounding unit to about 1e-6 over the depths.
QUICK_CASES = ((0.5, torch.float64, tuple(range(8, 41, 4))), (0.8, torch.float64, tuple(range(20, 121, 20))))
FULL_CASES = QUICK_CASES + ((0.9, torch.float32, tuple(range(20, 141, 20))),
                            (0.95, torch.float64, tuple(range(100, 501, 100))))


def _weak_function(dtype: torch.dtype, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        f = nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh(), nn.Linear(WIDTH, WIDTH)).to(dtype)
    with torch.no_grad():
        for p in f.parameters():
            p.mul_(WEAK_GAIN)
    return f


@torch.no_grad()
def _median_drift(gamma: float, depth: int, dtype: torch.dtype, *, seed: int = 0) -> float:
    """Median over a batch of ``max|x_0' - x_0| / max|x_0|`` after forward and float inverse of ``depth``
    tied weak layers.

    One independent net per depth and the median over samples: the fitted slope is steadier (within 6% at
    gamma 0.95) than a fit to the per-step drift of one deep net (``analysis.reconstruction_drift``, 13%).
    """
    f = _weak_function(dtype, seed)
    x0 = torch.randn(BATCH, WIDTH, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)
    net = om.MomentumResNet([f] * depth, gamma, gradient="backprop")
    x_rec, _ = net.inverse(*net.forward_state(x0))
    per_sample = (x_rec - x0).abs().amax(dim=1) / x0.abs().amax(dim=1)  # (batch,)
    return float(per_sample.median())


def _drift_warnings(depth: int, on_drift: str) -> tuple[int, bool]:
    """Run one reversible backward in float32 at gamma 0.5; return (drift warnings, raised an error)."""
    f = _weak_function(torch.float32, seed=1)
    net = om.MomentumResNet([f] * depth, 0.5, gradient="reversible", gradient_options={"on_drift": on_drift})
    x = torch.randn(8, WIDTH, generator=torch.Generator().manual_seed(1)).requires_grad_()
    raised = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            net(x).sum().backward()
        except om.ReconstructionDriftError:
            raised = True
    n_warn = sum(issubclass(w.category, om.ReconstructionDriftWarning) for w in caught)
    return n_warn, raised


def verify(quick: bool = True) -> ClaimReport:
    """Check claim 2 numerically (under a second in quick mode).

    Parameters
    ----------
    quick : bool
        Fits at gamma 0.5 and 0.8 in float64 (default); ``False`` adds gamma 0.9 in float32 and gamma 0.95
        to depth 500.

    Returns
    -------
    ClaimReport
    """
    start = time.perf_counter()
    report = ClaimReport(CLAIM)
    for gamma, dtype, depths in QUICK_CASES if quick else FULL_CASES:
        drifts = [_median_drift(gamma, n, dtype) for n in depths]
        slope = float(np.polyfit(depths, np.log(drifts), 1)[0])
        expected = math.log(1.0 / gamma)
        bits = slope / math.log(2.0)
        report.add(
            f"bits lost per layer (fitted log2 drift vs N), gamma {gamma:g}, {str(dtype).removeprefix('torch.')}, "
            f"N = {depths[0]}..{depths[-1]}",
            bits,
            f"log2(1/gamma) = {expected / math.log(2.0):.3f} +- {SLOPE_RTOL:.0%}",
            abs(slope / expected - 1.0) <= SLOPE_RTOL,
        )

    # The reversible mode's guard: drift_tol = 1e-4 by default; float32 at gamma 0.5 passes it near N = 10.
    n_warn, _ = _drift_warnings(4, "warn")
    report.add("ReconstructionDriftWarning count, gamma 0.5, depth 4, float32 (drift ~1e-6)", n_warn, "0",
               n_warn == 0)
    n_warn, _ = _drift_warnings(24, "warn")
    report.add("ReconstructionDriftWarning count, gamma 0.5, depth 24, float32 (drift >> 1e-4)", n_warn, "1",
               n_warn == 1)
    n_warn, raised = _drift_warnings(24, "raise")
    report.add('ReconstructionDriftError raised with on_drift="raise", depth 24', float(raised), "1 (raised)",
               raised and n_warn == 0)
    report.seconds = time.perf_counter() - start
    return report
