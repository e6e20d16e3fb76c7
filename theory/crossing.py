"""Claim 6, non-linear examples where trajectories must cross (Sander et al., ICML 2021, section 4).

A first-order flow ``x' = f(x)`` is a homeomorphism; in 1-D it is increasing, so it cannot fit a decreasing
map such as ``x -> -x^3`` on ``[-1, 1]`` (the best non-decreasing fit is the constant 0, MSE ``1/7``); in the
plane it keeps nested rings nested, so no half-plane readout separates rings of alternating labels. A
Momentum ResNet moves in phase space ``(x, v)``; its position trajectories can cross, and with tied weights
at depth 15 it fits both.

``verify`` trains (``ode_momentum.analysis.crossing``), from the same initial weights, a tied-weight
momentum net (depth 15, ``gamma = 0.95``), the first-order flow of the same ``f`` over 15 time units (Euler
at ``h = 1/8`` in 1-D and ``1/4`` for the rings, certified to be a homeomorphism on the states it visits:
``h max ||J_f|| < 1``) and, in 1-D, the plain ResNet (``gamma = 0``, the same flow at ``h = 1``, which may
fold: reported, not bounded).

- 1-D: ``f`` a ``1 -> 16 -> 1`` tanh MLP, momentum net with the paper's ``v_0 = f(x_0)``; MSE on a
  201-point grid of ``[-1, 1]``.
- Rings: three rings (radii 1, 2, 3, labels 0, 1, 0), ``f(x) = W2 tanh(W1 x + b)`` of width 16, the final
  2-D state used as the logits (no trainable readout: the flow must separate the classes; any affine
  readout would also be a half-plane); accuracy on a fresh test draw. With two rings a trained flow reaches
  about 98% by stretching an arc of the outer ring around the inner one (topology forbids only 100%); with
  three it would need a pocket inside a pocket, and it stays at the majority rate.
"""

from __future__ import annotations

import time

import numpy as np

from ode_momentum.analysis import ClaimReport
from ode_momentum.analysis.crossing import CubicConfig, RingsConfig, fit_cubic, fit_rings

CLAIM = "6. Non-linear examples: momentum trajectories cross (x -> -x^3, nested rings); first-order flows cannot"

CUBIC_MOMENTUM_MAX = 0.05  # the bound on the momentum net's MSE (best linear fit: 0.023)
CUBIC_FLOW_MIN = 0.1  # the bound for the flow (any non-decreasing map: >= 1/7 = 0.143)
RINGS_MOMENTUM_MIN = 0.95  # the bounds on test accuracy
RINGS_FLOW_MAX = 0.85
CERTIFICATE_MAX = 1.0  # h max ||J_f|| < 1: every Euler step of the flow is injective (increasing in 1-D)
# The flow's outputs on the sorted grid may decrease by float32 rounding of values of order 1, no more.
MONOTONE_TOL = 1e-5

QUICK_CUBIC = CubicConfig(n_train=50, iters=300)
QUICK_RINGS = RingsConfig(n_train=400, n_eval=500, iters=500, lr=5e-2)


def verify(quick: bool = True) -> ClaimReport:
    """Check claim 6 by training (about 10 s in quick mode, 0.5 to 1.5 min in full, on one core).

    Parameters
    ----------
    quick : bool
        Shorter training on fewer points (default); ``False``: the full settings of ``CubicConfig()`` and
        ``RingsConfig()``.

    Returns
    -------
    ClaimReport
    """
    start = time.perf_counter()
    report = ClaimReport(CLAIM)
    cubic = fit_cubic(QUICK_CUBIC if quick else CubicConfig())
    report.add("1-D -x^3: momentum net MSE (depth 15, tied, v0 = f(x0))", cubic.mse["momentum"],
               f"< {CUBIC_MOMENTUM_MAX:g}", cubic.mse["momentum"] < CUBIC_MOMENTUM_MAX)
    report.add("1-D -x^3: first-order flow MSE", cubic.mse["flow"], f"> {CUBIC_FLOW_MIN:g}",
               cubic.mse["flow"] > CUBIC_FLOW_MIN)
    min_step = float(np.diff(cubic.outputs["flow"]).min())
    report.add("1-D: smallest increment of the flow's map on the sorted grid (non-decreasing)", min_step,
               f">= -{MONOTONE_TOL:g}", min_step >= -MONOTONE_TOL)
    report.add("1-D: flow certificate h max|f'| on visited states", cubic.step_lipschitz,
               f"< {CERTIFICATE_MAX:g}", cubic.step_lipschitz < CERTIFICATE_MAX)
    report.add("1-D -x^3: plain ResNet (gamma 0, h = 1) MSE, for reference", cubic.mse["resnet"],
               "reported (a unit-step ResNet may fold)", True)

    rings = fit_rings(QUICK_RINGS if quick else RingsConfig())
    n = rings.config.n_rings
    report.add(f"{n} rings: momentum net test accuracy", rings.accuracy["momentum"], f">= {RINGS_MOMENTUM_MIN:g}",
               rings.accuracy["momentum"] >= RINGS_MOMENTUM_MIN)
    report.add(f"{n} rings: first-order flow test accuracy", rings.accuracy["flow"], f"<= {RINGS_FLOW_MAX:g}",
               rings.accuracy["flow"] <= RINGS_FLOW_MAX)
    report.add("rings: flow certificate h max ||J_f|| on visited states", rings.step_lipschitz,
               f"< {CERTIFICATE_MAX:g}", rings.step_lipschitz < CERTIFICATE_MAX)
    report.seconds = time.perf_counter() - start
    return report
