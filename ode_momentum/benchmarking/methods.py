"""The compared methods: one way each to run and differentiate the momentum stack ``v <- g v + (1-g) f_n(x)``,
``x <- x + v`` over the same residual functions.

Each :class:`Method` builds an ``nn.Module`` whose ``forward(x)`` returns ``x_N`` (``v_0 = 0``). Methods of
one *reference* family compute the same forward: ``"momentum"`` (the paper's layer rule: ours, momentumnet,
``torch.utils.checkpoint``) and ``"euler"`` (torchdiffeq's explicit Euler on the first-order form
``x' = v``, ``v' = (1 - gamma) (f_n(x) - v)`` at step 1: the same ``N`` evaluations of ``f_n``; it differs from
the layer rule only in using ``v_n`` instead of ``v_{n+1}`` to move ``x``). Gradient errors are measured
against the float64 backprop of the method's own reference family.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import ode_momentum as om
from .packages import MOMENTUMNET, import_momentumnet

REFERENCE_MOMENTUM = "momentum"
REFERENCE_EULER = "euler"


@dataclass(frozen=True)
class Method:
    """One compared way to run and differentiate the stack.

    Attributes
    ----------
    name : str
        Key in the results.
    family : str
        Who implements it: ``"ode_momentum"``, ``"momentumnet"``, ``"torchdiffeq"`` or ``"torch"``.
    package : str or None
        The package it needs beyond this one (its availability is checked; ``None``: always available).
    reference : str
        ``"momentum"`` or ``"euler"``: which float64 model its gradient is compared with.
    memory : str
        The activation memory it promises, in words.
    description : str
        What exactly runs.
    build : callable ``(functions, gamma, site_dir) -> nn.Module``
    all_params_per_step : bool
        Its backward computes a vector-Jacobian product against *every* parameter of the stack at each step
        (torchdiffeq's adjoint: the field is one module), so its cost grows like ``depth x parameters``,
        quadratically in depth for untied layers. The runner skips such cells above a work limit.
    """

    name: str
    family: str
    package: str | None
    reference: str
    memory: str
    description: str
    build: Callable[[list[nn.Module], float, str | None], nn.Module]
    all_params_per_step: bool = False

    def as_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "build"}


def _ours(gradient: str, options: dict | None = None):
    def build(functions, gamma, site_dir=None):
        return om.MomentumResNet(functions, gamma, gradient=gradient, gradient_options=options)

    return build


def _momentumnet(use_backprop: bool):
    def build(functions, gamma, site_dir=None):
        module = import_momentumnet(site_dir)
        return module.MomentumNet(functions, gamma, init_speed=False, use_backprop=use_backprop)

    return build


class MomentumField(nn.Module):
    """The first-order form of the layer rule with step 1: ``(x, v) -> (v, (1 - gamma) (f_n(x) - v))``.

    ``f_n`` is piecewise constant in time: layer ``n = floor(t)`` inside ``(n, n + 1)``. The solvers run with
    torchdiffeq's ``perturb`` option, which evaluates at the time just inside the step in the direction of
    integration, so the forward Euler step from ``n`` and the adjoint's backward step from ``n + 1`` both see
    layer ``n`` (without it the adjoint would see layer ``n + 1``: the off-by-one of a discontinuous field).
    """

    def __init__(self, functions: list[nn.Module], gamma: float):
        super().__init__()
        self.functions = nn.ModuleList(functions)
        self.gamma = gamma

    def forward(self, t, state):
        x, v = state
        n = min(max(int(math.floor(float(t.detach()))), 0), len(self.functions) - 1)
        return v, (1.0 - self.gamma) * (self.functions[n](x) - v)


class TorchdiffeqStack(nn.Module):
    """``x_N`` of torchdiffeq's ``odeint`` (or ``odeint_adjoint``), ``method="euler"``, ``step_size=1``,
    ``perturb=True``, on :class:`MomentumField` over ``[0, N]``."""

    def __init__(self, functions: list[nn.Module], gamma: float, adjoint: bool):
        super().__init__()
        self.field = MomentumField(functions, gamma)
        self.adjoint = adjoint

    def forward(self, x):
        import torchdiffeq

        solve = torchdiffeq.odeint_adjoint if self.adjoint else torchdiffeq.odeint
        t = torch.tensor([0.0, float(len(self.field.functions))], dtype=x.dtype, device=x.device)
        options = {"step_size": 1.0, "perturb": True}  # see MomentumField
        xs, _ = solve(self.field, (x, torch.zeros_like(x)), t, method="euler", options=options)
        return xs[-1]


def _torchdiffeq(adjoint: bool):
    def build(functions, gamma, site_dir=None):
        return TorchdiffeqStack(functions, gamma, adjoint)

    return build


class CheckpointedStack(nn.Module):
    """The layer rule with ``torch.utils.checkpoint.checkpoint`` around segments of ``ceil(sqrt(N))`` layers.

    Saves ``(x, v)`` at each segment's start and recomputes the segment in the backward: activation memory
    ``O(sqrt N)`` states plus one segment's activations, one extra forward. ``use_reentrant=True`` so that
    the saved segment inputs pass through autograd's saved-tensor hooks and are counted like every other
    method's (the non-reentrant variant keeps them in a closure, invisible to the hooks).
    """

    def __init__(self, functions: list[nn.Module], gamma: float):
        super().__init__()
        self.functions = nn.ModuleList(functions)
        self.gamma = gamma
        self.segment = max(1, math.ceil(math.sqrt(len(functions))))

    def _run(self, x, v, start: int, stop: int):
        g = self.gamma
        for f in self.functions[start:stop]:
            v = g * v + (1.0 - g) * f(x)
            x = x + v
        return x, v

    def forward(self, x):
        v = torch.zeros_like(x)
        for start in range(0, len(self.functions), self.segment):
            stop = min(start + self.segment, len(self.functions))
            x, v = checkpoint(self._run, x, v, start, stop, use_reentrant=True)
        return x


def all_methods() -> dict[str, Method]:
    """Every compared method, in report order."""
    methods = [
        Method("backprop", "ode_momentum", None, REFERENCE_MOMENTUM, "O(N) activations",
               'MomentumResNet(gradient="backprop"): autograd through the layer rule; the timing reference',
               _ours("backprop")),
        Method("reversible", "ode_momentum", None, REFERENCE_MOMENTUM, "O(1): x_0, x_N, v_N",
               'MomentumResNet(gradient="reversible"): float reversal, default options (its drift warnings are '
               "recorded)", _ours("reversible")),
        Method("checkpoint", "ode_momentum", None, REFERENCE_MOMENTUM, "2 states every K layers",
               'MomentumResNet(gradient="checkpoint"): float reversal inside segments of K layers, K predicted '
               "from gamma (default options)", _ours("checkpoint")),
        Method("exact", "ode_momentum", None, REFERENCE_MOMENTUM, "O(1) + bit buffer",
               'MomentumResNet(gradient="exact"): int64 fixed point, bit buffer (default options)',
               _ours("exact")),
        Method("exact_eager", "ode_momentum", None, REFERENCE_MOMENTUM, "O(1) + bit buffer",
               'MomentumResNet(gradient="exact", gradient_options={"kernels": "eager"}): the same bits with '
               "elementwise torch operations instead of the native C kernels", _ours("exact", {"kernels": "eager"})),

        Method("momentumnet_backprop", "momentumnet", MOMENTUMNET, REFERENCE_MOMENTUM, "O(N) activations",
               "momentumnet 0.10 MomentumNet(functions, gamma, use_backprop=True)", _momentumnet(True)),
        Method("momentumnet_free", "momentumnet", MOMENTUMNET, REFERENCE_MOMENTUM, "O(1) + 2 int64 states",
               "momentumnet 0.10 MomentumNet(functions, gamma, use_backprop=False): its memory-free mode",
               _momentumnet(False)),
        Method("torchdiffeq_odeint", "torchdiffeq", "torchdiffeq", REFERENCE_EULER, "O(N) activations",
               'torchdiffeq.odeint(method="euler", step_size=1, perturb) on the first-order form, backprop through it',
               _torchdiffeq(False)),
        Method("torchdiffeq_adjoint", "torchdiffeq", "torchdiffeq", REFERENCE_EULER, "O(1) (continuous adjoint)",
               'torchdiffeq.odeint_adjoint(method="euler", step_size=1, perturb): the continuous adjoint, solved '
               "backwards on the same Euler grid", _torchdiffeq(True), all_params_per_step=True),
        Method("torch_checkpoint", "torch", None, REFERENCE_MOMENTUM, "O(sqrt N) states",
               "torch.utils.checkpoint (reentrant) around segments of ceil(sqrt N) layers of the layer rule",
               lambda functions, gamma, site_dir=None: CheckpointedStack(functions, gamma)),
    ]
    return {m.name: m for m in methods}


def reference_model(kind: str, functions: list[nn.Module], gamma: float) -> nn.Module:
    """The float64 reference of a family: plain autograd through the same forward."""
    if kind == REFERENCE_MOMENTUM:
        return om.MomentumResNet(functions, gamma, gradient="backprop")
    if kind == REFERENCE_EULER:
        return TorchdiffeqStack(functions, gamma, adjoint=False)
    raise ValueError(f"`reference` must be {REFERENCE_MOMENTUM!r} or {REFERENCE_EULER!r}; got {kind!r}.")
