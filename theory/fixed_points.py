"""Claim 7, fixed points and learning to optimise (Sander et al., ICML 2021, section 3.3).

One momentum layer ``(x, v) -> (x + gamma v + (1 - gamma) f(x), gamma v + (1 - gamma) f(x))`` has Jacobian
determinant ``gamma^d`` for every ``f``: it contracts phase-space volume, so a stack can pull a set of initial
states onto a fixed point. An additive-coupling RevNet layer has determinant 1 (volume preserving) and
cannot. With ``f = -eta grad F`` the momentum net is the heavy-ball method, which converges linearly on
quadratics; the RevNet analogue (no damping) oscillates forever. Hence a momentum net trained to map a
problem to its minimiser keeps converging when run deeper than trained, and a RevNet does not.

``verify`` (``ode_momentum.analysis.fixed_points``) measures both determinants by autograd (float64), runs
the heavy ball and its RevNet twin on random quadratics against the predicted rate, and trains a momentum
net and a RevNet with equal parameter counts to output the minimiser of random quadratics at depth ``N``
from their gradients, then runs both to ``5 N`` layers.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from ode_momentum.analysis import ClaimReport
from ode_momentum.analysis.fixed_points import (
    L2OConfig,
    heavy_ball,
    learning_to_optimise,
    momentum_layer_det,
    random_quadratics,
    revnet_layer_det,
)
from ode_momentum.nn import AdditiveCoupling

CLAIM = "7. Fixed points: momentum layers contract volume (det gamma^d), RevNets do not; learning to optimise"

DET_TOL = 1e-6  # the bound on |det - expected| (float64 autograd Jacobians reach ~1e-15)
# Heavy ball: fitted asymptotic rate vs the spectral radius of the iteration matrix. Oscillating modes
# modulate log distance; the fit over the tail agrees to 0.01 in float64.
RATE_TOL = 0.02
CONVERGED = 1e-10  # heavy ball's relative distance after HB_STEPS iterations (rate 0.71: 0.71^100 ~ 1e-15)
NOT_CONVERGED = 0.1  # relative distance a non-converging iteration stays above (RevNets: 0.2 to 0.8)
HB_GAMMA, HB_ETA, HB_STEPS = 0.5, 2.0, 100  # heavy ball beta = 0.5, alpha = 1 on eigenvalues in [0.1, 1]

QUICK_L2O = L2OConfig(n_train=128, n_test=128, iters=150)


def _mlp(d: int, width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d, width), nn.Tanh(), nn.Linear(width, d)).double()


def verify(quick: bool = True) -> ClaimReport:
    """Check claim 7 numerically (a few seconds in quick mode).

    Parameters
    ----------
    quick : bool
        One ``gamma`` for the determinant, a short learning-to-optimise run (default); ``False``: three
        ``gamma`` values and ``L2OConfig()``.

    Returns
    -------
    ClaimReport
    """
    start = time.perf_counter()
    report = ClaimReport(CLAIM)
    d = 8
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        f, F, G = _mlp(d, 32), _mlp(d, 32), _mlp(d, 32)
    x, v = (torch.randn(d, generator=gen, dtype=torch.float64) for _ in range(2))

    # 1. Determinants of one layer in phase space (dimension 2d).
    for gamma in (0.9,) if quick else (0.5, 0.9, 0.99):
        det = momentum_layer_det(f, gamma, x, v)
        report.add(f"momentum layer: |det J - gamma^d|, gamma {gamma:g}, d = {d} (gamma^d = {det.expected:.4g})",
                   det.error, f"< {DET_TOL:g}", det.error < DET_TOL)
    det = revnet_layer_det(AdditiveCoupling(F, G), x, v)
    report.add(f"RevNet additive coupling: |det J - 1|, d = {d}", det.error, f"< {DET_TOL:g}", det.error < DET_TOL)

    # 2. Heavy ball on quadratics, and its undamped RevNet analogue.
    problems = random_quadratics(4 if quick else 32, d, cond=10.0, seed=0)
    hb = heavy_ball(problems, gamma=HB_GAMMA, eta=HB_ETA, n_steps=HB_STEPS)
    err = float(abs(hb.fitted_rate - hb.predicted_rate).max())
    report.add(f"heavy ball (gamma {HB_GAMMA:g}, eta {HB_ETA:g}): max |fitted - predicted rate|", err,
               f"< {RATE_TOL:g}", err < RATE_TOL)
    worst = float(hb.distance_momentum[-1].max())
    report.add(f"heavy ball: worst relative distance to x* after {HB_STEPS} layers", worst, f"< {CONVERGED:g}",
               worst < CONVERGED)
    tail = float(hb.distance_revnet[HB_STEPS // 2:].mean(axis=0).min())
    report.add(f"RevNet analogue: mean relative distance over layers {HB_STEPS // 2}..{HB_STEPS} (least over "
               "problems)", tail, f"> {NOT_CONVERGED:g} (oscillates)", tail > NOT_CONVERGED)

    # 3. Learning to optimise, run deeper than trained.
    l2o = learning_to_optimise(QUICK_L2O if quick else L2OConfig())
    n = l2o.config.depth
    k = l2o.config.deeper * n
    (m_n, r_n), (m_k, r_k) = l2o.at(n), l2o.at(k)
    report.add("L2O: parameters, momentum net - RevNet", l2o.n_params_momentum - l2o.n_params_revnet, "0",
               l2o.n_params_momentum == l2o.n_params_revnet)
    report.add(f"L2O momentum: relative error at {k} layers / at training depth {n} ({m_n:.3g})", m_k / m_n,
               "< 1 (keeps converging)", m_k < m_n)
    report.add(f"L2O RevNet: relative error at {k} layers (at training depth {n}: {r_n:.3g})", r_k,
               f"> {NOT_CONVERGED:g} (does not converge)", r_k > NOT_CONVERGED)
    report.seconds = time.perf_counter() - start
    return report
