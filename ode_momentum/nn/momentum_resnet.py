"""The discrete Momentum ResNet: a drop-in stack of residual functions with memory-free gradients."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from .._checks import check_finite, check_gamma, check_same_shape, check_tensor
from ..gradients import Trajectory, make_grid, resolve_gradient
from ..gradients.exact import effective_gamma
from ..integrators import Momentum

class MomentumResNet(nn.Module):
    """Momentum residual stack (Sander et al. 2021, eq. (3)), differentiable in O(1) activation memory.

    For layers ``n = 0 .. N-1`` with residual functions ``f_n``::

        v_{n+1} = gamma * v_n + (1 - gamma) * f_n(x_n)
        x_{n+1} = x_n + v_{n+1}

    with ``v_0 = init_function(x_0)`` or ``0``. It is one unit step of the ``momentum`` integrator per layer
    (``eps = 1 / (1 - gamma)``). ``gamma = 0`` is a plain ResNet.

    Parameters
    ----------
    functions : sequence of nn.Module (list, nn.Sequential or nn.ModuleList), length ``N >= 1``
        Residual functions mapping ``(batch, *features)`` to the same shape. One module may appear several
        times (tied weights). Each is called as ``f_n(x, *args, **kwargs)`` with the extra arguments of
        :meth:`forward`.
    gamma : float in [0, 1]
        Momentum coefficient (dimensionless). ``gamma = 0`` needs ``gradient="backprop"``.
    init_function : nn.Module, optional
        ``v_0 = init_function(x_0)`` (the paper's learned initial velocity); default ``v_0 = 0``.
    residual : bool
        ``True``: each module *is* the residual ``f_n``. ``False``: each module is a whole block that already
        adds its skip, ``block(x) = x + f(x)``, so ``f_n(x) = block(x) - x`` (converted ResNet blocks).
    gradient : {"reversible", "exact", "checkpoint", "auto", "backprop"}
        How to differentiate (``ode_momentum.GRADIENTS``). ``"reversible"``: float reversal, activation
        memory independent of depth, reconstruction drift checked in the backward. ``"exact"``: int64 fixed
        point with a bit buffer, gradients exact at any depth (the damping is the dyadic
        :attr:`effective_gamma`). ``"checkpoint"``: float reversal inside stored segments. ``"auto"``:
        ``"reversible"`` for float64 states whose predicted drift stays within 32 unit roundoffs, else
        ``"exact"`` (:class:`~ode_momentum.gradients.exact.AutoOptions`). ``"backprop"``: plain autograd
        (memory grows with depth).
    gradient_options : dict, optional
        Options of the gradient mode, e.g. ``{"drift_tol": 1e-6, "on_drift": "raise"}`` (reversible),
        ``{"frac_bits": 44, "gamma_bits": 30}`` (exact), ``{"every": 8}`` (checkpoint).

    Raises
    ------
    TypeError
        If ``functions`` is not a sequence of modules or ``init_function`` is not a module.
    ValueError
        If ``functions`` is empty, ``gamma`` lies outside [0, 1], ``gamma = 0`` with a memory-free gradient,
        or ``gradient`` is unknown.

    References
    ----------
    Sander, Ablin, Blondel, Peyré, "Momentum Residual Neural Networks", ICML 2021, section 3, eq. (3).
    """

    def __init__(
        self,
        functions: Iterable[nn.Module],
        gamma: float = 0.9,
        *,
        init_function: nn.Module | None = None,
        residual: bool = True,
        gradient: str = "reversible",
        gradient_options: dict | None = None,
    ):
        super().__init__()
        if isinstance(functions, nn.Module) and not isinstance(functions, (nn.Sequential, nn.ModuleList)):
            raise TypeError(
                f"`functions` must be a list, nn.Sequential or nn.ModuleList of residual modules; got a single "
                f"{type(functions).__name__}. Wrap it: [block] * depth for tied weights."
            )
        functions = list(functions)
        if not functions:
            raise ValueError("`functions` is empty; a Momentum ResNet needs at least one residual function.")
        for i, f in enumerate(functions):
            if not isinstance(f, nn.Module):
                raise TypeError(f"`functions[{i}]` must be an nn.Module; got {type(f).__name__}.")
        if init_function is not None and not isinstance(init_function, nn.Module):
            raise TypeError(f"`init_function` must be an nn.Module or None; got {type(init_function).__name__}.")
        self._solve, self._options = resolve_gradient(gradient, gradient_options)
        self.gamma = check_gamma(gamma, allow_zero=gradient == "backprop")
        self.gradient = gradient
        self.residual = bool(residual)
        self.functions = nn.ModuleList(functions)
        self.init_function = init_function
        self._integrator = Momentum.from_gamma(self.gamma)
        self._grids: dict = {}

    @property
    def depth(self) -> int:
        return len(self.functions)

    @property
    def effective_gamma(self) -> float:
        """The damping the forward actually applies: ``gamma`` itself, or its dyadic quantisation
        ``round(gamma 2^k) / 2^k`` in the ``"exact"`` and ``"auto"`` modes (within ``2^-(k+1)``)."""
        if self.gradient in ("exact", "auto") and self.gamma > 0:
            return effective_gamma(self.gamma, self._options.gamma_bits)
        return self.gamma

    def extra_repr(self) -> str:
        gamma = f"gamma={self.gamma}"
        if self.effective_gamma != self.gamma:
            gamma += f" (effective {self.effective_gamma!r})"
        return f"depth={self.depth}, {gamma}, residual={self.residual}, gradient={self.gradient!r}"

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Return ``x_N`` for input ``x`` of shape ``(batch, *features)`` (floating); extra arguments go to
        every residual function."""
        return self.forward_state(x, None, *args, **kwargs)[0]

    def forward_state(self, x: torch.Tensor, v: torch.Tensor | None = None, *args, **kwargs):
        """Return ``(x_N, v_N)`` from ``(x_0, v_0)``; ``v = None`` uses ``init_function`` or zeros."""
        x = check_tensor("x", x)
        if not x.is_floating_point():
            raise TypeError(f"`x` must be a floating-point tensor; got dtype {x.dtype}. Use `x.float()`.")
        if v is None:
            v = self.init_function(x) if self.init_function is not None else torch.zeros_like(x)
            if v.shape != x.shape:
                raise ValueError(
                    f"`init_function` must return the shape of x, {tuple(x.shape)}; got {tuple(v.shape)}."
                )
        else:
            check_same_shape("v", v, "x", x)
        traj = self.trajectory(x, *args, **kwargs)
        xs, vs = self._solve(traj, x, v, self._options)
        return xs[-1], vs[-1]

    @torch.no_grad()
    def inverse(self, x: torch.Tensor, v: torch.Tensor, *args, **kwargs):
        """Reconstruct ``(x_0, v_0)`` from ``(x_N, v_N)`` with the closed-form inverse (float arithmetic).

        Rounding grows like ``gamma^{-N}``; see ``ode_momentum.analysis`` for drift measurements.

        Raises
        ------
        ValueError
            If ``gamma = 0`` (the velocity is forgotten; there is no inverse).
        """
        check_gamma(self.gamma, allow_zero=False)
        check_finite("x", x)
        check_same_shape("v", v, "x", x)
        check_finite("v", v)
        traj = self.trajectory(x, *args, **kwargs)
        for n in range(traj.n_steps - 1, -1, -1):
            x, v = self._integrator.inverse_step(traj.funcs[n], x, v, traj.spans[n])
        return x, v

    def trajectory(self, x: torch.Tensor, *args, **kwargs) -> Trajectory:
        """The solve this stack runs for input ``x`` (``ode_momentum.gradients.Trajectory``), for analysis."""
        key = (self.depth, x.dtype, x.device)
        if key not in self._grids:
            self._grids[key] = make_grid([0.0, float(self.depth)], None, self.depth, x)
        spans, save_at = self._grids[key]
        funcs = [_LayerCall(f, args, kwargs, self.residual) for f in self.functions]
        extras = tuple(_tensors_requiring_grad((args, kwargs)))
        return Trajectory(self._integrator, funcs, spans, save_at[1:], root=self.functions, extras=extras)


class _LayerCall:
    """``f_n(t, x)`` for layer ``n``: the module's residual, with the forward's extra arguments."""

    __slots__ = ("module", "args", "kwargs", "residual")

    def __init__(self, module, args, kwargs, residual):
        self.module, self.args, self.kwargs, self.residual = module, args, kwargs, residual

    def __call__(self, t, x):
        out = self.module(x, *self.args, **self.kwargs)
        return out if self.residual else out - x


def _tensors_requiring_grad(obj):
    if isinstance(obj, torch.Tensor):
        if obj.requires_grad:
            yield obj
    elif isinstance(obj, Mapping):
        for value in obj.values():
            yield from _tensors_requiring_grad(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors_requiring_grad(value)
