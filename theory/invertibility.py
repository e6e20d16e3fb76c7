"""Claim 1, invertibility (Sander et al., ICML 2021, section 3.1, "Memory cost").

The momentum layer rule ``v_{n+1} = gamma v_n + (1 - gamma) f_n(x_n)``, ``x_{n+1} = x_n + v_{n+1}`` has the
closed-form inverse ``x_n = x_{n+1} - v_{n+1}``, ``v_n = (v_{n+1} - (1 - gamma) f_n(x_n)) / gamma`` for *any*
residual function: no Lipschitz constraint (unlike the fixed-point inversion of i-ResNets) and no channel
split (unlike RevNets). The backward pass can therefore recompute the activations instead of storing them,
and the activation memory of a stack is O(1) in its depth instead of O(N).

``verify`` checks, in float64:

- the inverse (``MomentumResNet.inverse``) reconstructs ``x_0`` from ``(x_N, v_N)`` to rounding, for residual
  functions whose Jacobians have norms well above 1 (a plain ResNet step ``x + f(x)`` with such ``f`` need not
  be injective);
- the memory-free gradient (``gradient="reversible"``) equals backprop;
- the bytes autograd saves (``analysis.saved_tensor_bytes``) are flat in depth for the reversible mode and
  proportional to depth for backprop.
"""

from __future__ import annotations

import time

import torch
from torch import nn

import ode_momentum as om
from ode_momentum.analysis import ClaimReport, saved_tensor_bytes

CLAIM = "1. Invertibility: closed-form inverse for any residual, activation memory O(1) in depth"

GAMMA = 0.9  # the paper's value
# Float64 reversal amplifies rounding (1e-16) by about gamma^-N (0.9^-64 ~ 850), more where ||J_f|| > 1;
# measured 4e-14 at depth 32 and 6e-12 at depth 64 with the scaled-up residuals below.
RECONSTRUCTION_TOL = 1e-10
# Reversal and backprop differ by the reconstruction's rounding only (the README's float64 figure).
GRADIENT_TOL = 1e-10
# Memory-free modes keep x_0, x_N, v_N whatever the depth; 1% allows for bookkeeping tensors.
FLAT_RTOL = 0.01
# Backprop saves a fixed set of tensors per layer: bytes proportional to depth, 5% for those saved once.
LINEAR_RTOL = 0.05
# The residual functions' weights are scaled up so that ||J_f|| > 1 somewhere: no Lipschitz constraint.
WEIGHT_GAIN = 2.0


def _functions(depth: int, width: int, gen_seed: int, gain: float = 1.0) -> list[nn.Module]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(gen_seed)
        functions = [nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width)).double()
                     for _ in range(depth)]
        with torch.no_grad():
            for f in functions:
                for p in f.parameters():
                    p.mul_(gain)
    return functions


def _max_jacobian_norm(functions, x: torch.Tensor) -> float:
    """Largest ``||J_f(x)||_2`` over the functions and the samples of ``x``."""
    norms = []
    for f in functions:
        jac = torch.func.vmap(torch.func.jacrev(lambda z: f(z[None])[0]))(x)  # (batch, width, width)
        norms.append(float(torch.linalg.matrix_norm(jac.detach(), 2).max()))
    return max(norms)


def verify(quick: bool = True) -> ClaimReport:
    """Check claim 1 numerically (a couple of seconds in quick mode).

    Parameters
    ----------
    quick : bool
        Depths 8 and 64 for the memory check and depth 32 for the reconstruction (default); ``False`` adds
        depth 256 and reconstructs at depths 32 and 64.

    Returns
    -------
    ClaimReport
    """
    start = time.perf_counter()
    report = ClaimReport(CLAIM)
    gen = torch.Generator().manual_seed(0)
    width = 16

    # 1. Closed-form inverse for unconstrained residual functions.
    for depth in (32,) if quick else (32, 64):
        functions = _functions(depth, width, gen_seed=depth, gain=WEIGHT_GAIN)
        net = om.MomentumResNet(functions, GAMMA, gradient="backprop")
        x0 = torch.randn(64, width, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            x_n, v_n = net.forward_state(x0)
            x_rec, v_rec = net.inverse(x_n, v_n)
        err = float((x_rec - x0).abs().max() / x0.abs().max())
        report.add(f"relative error of x_0 = inverse(x_N, v_N), depth {depth}, float64", err,
                   f"< {RECONSTRUCTION_TOL:g}", err < RECONSTRUCTION_TOL)
        if depth == 32:
            lip = _max_jacobian_norm(functions[:4], x0)
            report.add("max ||J_f|| of the residuals at the inputs (no Lipschitz constraint)", lip, "> 1",
                       lip > 1)

    # 2. Recomputing activations gives the backprop gradient.
    functions = _functions(16, width, gen_seed=1)
    x0 = torch.randn(32, width, generator=gen, dtype=torch.float64)
    grads = {}
    for mode in ("backprop", "reversible"):
        net = om.MomentumResNet(functions, GAMMA, gradient=mode)
        x = x0.clone().requires_grad_()
        (net(x) ** 2).sum().backward()
        grads[mode] = torch.cat([x.grad.reshape(-1)] + [p.grad.reshape(-1) for p in net.parameters()])
        net.zero_grad(set_to_none=True)
    err = float((grads["reversible"] - grads["backprop"]).abs().max() / grads["backprop"].abs().max())
    report.add("gradient: reversible vs backprop, depth 16, float64 (relative)", err, f"< {GRADIENT_TOL:g}",
               err < GRADIENT_TOL)

    # 3. Activation memory against depth.
    depths = (8, 64) if quick else (8, 64, 256)
    x = torch.randn(256, width, generator=gen, dtype=torch.float64, requires_grad=True)
    sizes = {}
    for mode in ("reversible", "backprop"):
        for depth in depths:
            net = om.MomentumResNet(_functions(depth, width, gen_seed=2), GAMMA, gradient=mode)
            sizes[mode, depth] = saved_tensor_bytes(net, x)
    ratio = max(sizes["reversible", d] for d in depths) / min(sizes["reversible", d] for d in depths)
    report.add(f"reversible: max / min saved bytes over depths {depths}", ratio, f"<= {1 + FLAT_RTOL:g} (flat)",
               ratio <= 1 + FLAT_RTOL)
    deep, shallow = depths[-1], depths[0]
    ratio = sizes["backprop", deep] / sizes["backprop", shallow]
    expected = deep / shallow
    report.add(f"backprop: saved bytes at depth {deep} / depth {shallow}", ratio,
               f"{expected:g} +- {LINEAR_RTOL:.0%} (linear)", abs(ratio / expected - 1) <= LINEAR_RTOL)
    ratio = sizes["backprop", deep] / sizes["reversible", deep]
    report.add(f"backprop / reversible saved bytes at depth {deep}", ratio, f">= {deep // 2} (O(N) vs O(1))",
               ratio >= deep // 2)
    report.seconds = time.perf_counter() - start
    return report
