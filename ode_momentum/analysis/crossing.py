"""Non-linear examples where trajectories must cross: the 1-D map ``x -> -x^3`` and nested rings.

A first-order flow ``x' = f(x)`` is a homeomorphism of the state space, and in 1-D an increasing one: it can
neither fit a decreasing target such as ``x -> -x^3`` nor move the inner ring of nested rings out of the
outer one. A Momentum ResNet evolves ``(x, v)`` and only its position is read out, so position trajectories
can cross. Both experiments train, from the same initial weights, three tied-weight models with the same
residual function (same parameter count):

- ``"momentum"``: ``MomentumResNet([f] * depth, gamma)``, with ``v_0 = 0`` or the paper's ``v_0 = f(x_0)`` (the
  same tied ``f``: no extra parameters);
- ``"flow"``: the first-order flow ``x' = f(x)`` on ``[0, depth]`` (one time unit per layer), explicit Euler
  with ``steps_per_layer`` steps per unit time (:func:`~ode_momentum.NeuralODE`). Each Euler step
  ``x + h f(x)`` is a homeomorphism onto its image (increasing in 1-D) where ``h ||J_f|| < 1``; that
  certificate is measured over the states the trained flow visits (:func:`flow_step_lipschitz`), so a
  claim about "the flow" is checked, not assumed;
- ``"resnet"``: the plain ResNet ``x <- x + f(x)`` (``gamma = 0``, the same flow at ``h = 1``, which may fold).

Reference: Sander, Ablin, Blondel, Peyré, "Momentum Residual Neural Networks", ICML 2021, section 4
(representation capabilities: the 1-D crossing example; nested rings).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .._checks import check_choice, check_gamma, check_positive_int, check_real
from ..data.rings import check_seed, make_rings
from ..nn import MomentumResNet, NeuralODE, ResNetStack
from ..odeint import odeint
from .fixed_points import momentum_iterates

__all__ = [
    "MODELS",
    "CubicConfig",
    "CubicResult",
    "RingsConfig",
    "RingsResult",
    "TanhMLP",
    "fit_cubic",
    "fit_rings",
    "flow_step_lipschitz",
    "plot_cubic",
    "plot_rings",
]

MODELS = ("momentum", "flow", "resnet")
V0 = ("zero", "f")  # initial velocity of the momentum net: 0, or f(x_0) with the tied f


class TanhMLP(nn.Module):
    """Residual function ``f(x) = W2 tanh(W1 x + b1) (+ b2)``, ``(batch, dim) -> (batch, dim)``.

    Parameters
    ----------
    dim : int
        State dimension.
    width : int
        Hidden units.
    out_bias : bool
        Whether the output layer has a bias ``b2`` (the paper's 1-D MLP has one; its rings field
        ``W2^T tanh(W1 x + b)`` does not).
    """

    def __init__(self, dim: int, width: int, *, out_bias: bool = True):
        super().__init__()
        self.inp = nn.Linear(check_positive_int("dim", dim), check_positive_int("width", width))
        self.out = nn.Linear(width, dim, bias=out_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.inp(x)))


# Grid points per dimension over the bounding box of the flow's states, for the step's Lipschitz certificate.
_CERT_GRID = {1: 4001, 2: 201}
_CERT_PAD = 0.1  # the box is widened by 10% of its extent on each side (Euler sub-steps between layers)


@torch.no_grad()
def flow_step_lipschitz(f: nn.Module, states: np.ndarray, h: float) -> float:
    """``h max ||J_f(x)||_2`` over a grid of the bounding box of ``states``: the Euler step's certificate.

    On a convex set where ``h ||J_f|| < 1``, the Euler step ``x -> x + h f(x)`` is injective (its difference
    quotient is ``I + h * (an average of J_f)``, invertible), increasing in 1-D; the composition of such steps
    is then a homeomorphism onto its image (increasing in 1-D), like the exact flow.

    Parameters
    ----------
    f : nn.Module
        Field on ``(batch, dim)`` states, ``dim`` 1 or 2.
    states : ndarray, shape ``(..., dim)``
        States visited by the flow (e.g. its trajectories from every evaluation input).
    h : float
        Euler step.

    Returns
    -------
    float
        The certificate (``< 1``: certified on the grid).
    """
    states = np.asarray(states, dtype=np.float64).reshape(-1, states.shape[-1])
    dim = states.shape[1]
    lo, hi = states.min(axis=0), states.max(axis=0)
    lo, hi = lo - _CERT_PAD * (hi - lo), hi + _CERT_PAD * (hi - lo)
    axes = [torch.linspace(float(a), float(b), _CERT_GRID[dim]) for a, b in zip(lo, hi)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, dim)  # (points, dim)
    p = next(f.parameters())
    grid = grid.to(dtype=p.dtype, device=p.device)
    jac = torch.func.vmap(torch.func.jacrev(lambda x: f(x[None])[0]))(grid)  # (points, dim, dim)
    return h * float(torch.linalg.matrix_norm(jac, 2).max())


class _Autonomous(nn.Module):
    """``F(t, x) = f(x)``: a time-independent field for the ODE solvers."""

    def __init__(self, f: nn.Module):
        super().__init__()
        self.f = f

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.f(x)


def _build(kind: str, f: TanhMLP, config) -> nn.Module:
    depth = config.depth
    if kind == "momentum":
        init = f if config.v0 == "f" else None
        return MomentumResNet([f] * depth, config.gamma, init_function=init, gradient="backprop")
    if kind == "flow":
        return NeuralODE(_Autonomous(f), t1=float(depth), n_steps=depth * config.steps_per_layer)
    return ResNetStack([f] * depth)


@torch.no_grad()
def _trajectories(kind: str, model: nn.Module, x: torch.Tensor, depth: int, steps_per_layer: int) -> np.ndarray:
    """States after each layer (unit time), ``(depth + 1, batch, dim)``."""
    if kind == "momentum":
        xs, _ = momentum_iterates(model, x)
    elif kind == "flow":
        t = torch.arange(depth + 1, dtype=x.dtype)
        xs, _ = odeint(model.func, (x, None), t, eps=0.0, method="euler", n_steps=steps_per_layer)
    else:
        step = ResNetStack([model.functions[0]])
        xs = [x]
        for _ in range(depth):
            xs.append(step(xs[-1]))
        xs = torch.stack(xs)
    return xs.numpy().astype(np.float64)


def _train(model: nn.Module, X: torch.Tensor, loss_fn, iters: int, lr: float) -> float:
    """Full-batch Adam with a cosine-annealed learning rate; returns the last loss."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=iters)
    for _ in range(iters):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(X))
        loss.backward()
        opt.step()
        schedule.step()
    return loss.item()


def _check_common(config) -> None:
    check_positive_int("depth", config.depth)
    check_positive_int("width", config.width)
    check_gamma(config.gamma, allow_zero=False)
    for name in ("iters", "steps_per_layer", "n_train", "n_eval"):
        check_positive_int(name, getattr(config, name))
    if check_real("lr", config.lr) <= 0:
        raise ValueError(f"`lr` must be > 0; got {config.lr!r}.")
    for kind in config.models:
        if kind not in MODELS:
            raise ValueError(f"`models` entries must be in {MODELS}; got {kind!r}.")
    check_choice("v0", config.v0, V0)
    check_seed(config.seed)


# --------------------------------------------------------------------------------------------------------
# 1-D: x -> -x^3
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CubicConfig:
    """Settings of :func:`fit_cubic` (defaults: the full run; the paper's depth 15, 1 -> 16 -> 1 tanh MLP)."""

    depth: int = 15  # tied layers
    width: int = 16  # hidden units of f
    gamma: float = 0.95  # momentum; eps = 1 / (1 - gamma) = 20 layers, so the 15 layers are lightly damped
    v0: str = "f"  # the paper's v_0 = f(x_0) (tied f, no extra parameter); "zero" stalls near the best linear fit
    n_train: int = 100  # uniform training grid on [-1, 1]
    n_eval: int = 201  # uniform evaluation grid on [-1, 1] (includes the end points and 0)
    iters: int = 1500  # full-batch Adam steps per model
    lr: float = 5e-2  # Adam step size, cosine-annealed to 0
    steps_per_layer: int = 8  # Euler steps per unit time of the flow (h = 1/8; 1/4 certifies only just)
    input_gain: float = 3.0  # W1, b1 of the initial f scaled by this: tanh units non-linear on [-1, 1]
    models: tuple = MODELS  # which models to train
    n_traj: int = 21  # trajectories recorded for the figure (uniform starting points)
    seed: int = 0  # initial weights (shared by every model)

    def __post_init__(self):
        _check_common(self)
        check_positive_int("n_traj", self.n_traj)
        if check_real("input_gain", self.input_gain) <= 0:
            raise ValueError(f"`input_gain` must be > 0; got {self.input_gain!r}. 1 keeps PyTorch's init.")


@dataclass
class CubicResult:
    """Outcome of :func:`fit_cubic`.

    Attributes
    ----------
    config : CubicConfig
    grid : ndarray, shape ``(n_eval,)``
        Evaluation inputs on ``[-1, 1]``.
    outputs : dict str -> ndarray, shape ``(n_eval,)``
        Each model's prediction on ``grid``.
    mse : dict str -> float
        Mean squared error to ``-grid^3`` (the best non-decreasing map has ``1/7 ~ 0.143``; the best linear
        one ``1/7 - 3/25 ~ 0.023``).
    train_loss : dict str -> float
    step_lipschitz : float
        :func:`flow_step_lipschitz` of the trained first-order flow (``nan`` if it was not trained); ``< 1``
        certifies that its Euler map is increasing on the states it visits.
    trajectories : dict str -> ndarray, shape ``(depth + 1, n_traj)``
        Position after each layer (unit time) from ``n_traj`` starting points.
    """

    config: CubicConfig
    grid: np.ndarray
    outputs: dict = field(default_factory=dict)
    mse: dict = field(default_factory=dict)
    train_loss: dict = field(default_factory=dict)
    step_lipschitz: float = float("nan")
    trajectories: dict = field(default_factory=dict)


def fit_cubic(config: CubicConfig | None = None) -> CubicResult:
    """Fit ``x -> -x^3`` on ``[-1, 1]`` with a momentum net, a first-order flow and a ResNet (tied weights).

    Each model is trained by full-batch Adam on the mean squared error over a uniform grid, from the same
    initial :class:`TanhMLP` ``1 -> width -> 1`` (drawn inside ``torch.random.fork_rng`` from
    ``config.seed``: deterministic, global state untouched; its input layer scaled by ``input_gain`` so that
    the tanh units are non-linear on ``[-1, 1]``); float32. The momentum net starts from the paper's
    ``v_0 = f(x_0)`` by default: with ``v_0 = 0`` it also beats every monotone map but tends to stall near the
    best linear fit ``-0.6 x`` (MSE 0.023).

    Parameters
    ----------
    config : CubicConfig, optional

    Returns
    -------
    CubicResult

    References
    ----------
    Sander et al., ICML 2021, section 4 (the 1-D crossing example).
    """
    config = CubicConfig() if config is None else config
    if not isinstance(config, CubicConfig):
        raise TypeError(f"`config` must be a CubicConfig; got {type(config).__name__}.")
    c = config
    X = torch.linspace(-1.0, 1.0, c.n_train).unsqueeze(1)  # (n_train, 1)
    grid = torch.linspace(-1.0, 1.0, c.n_eval).unsqueeze(1)  # (n_eval, 1)
    starts = torch.linspace(-1.0, 1.0, c.n_traj).unsqueeze(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(c.seed)
        f0 = TanhMLP(1, c.width)
        with torch.no_grad():
            f0.inp.weight.mul_(c.input_gain)
            f0.inp.bias.mul_(c.input_gain)
    result = CubicResult(c, grid[:, 0].numpy().astype(np.float64))
    for kind in c.models:
        f = copy.deepcopy(f0)
        model = _build(kind, f, c)
        result.train_loss[kind] = _train(model, X, lambda out: ((out + X**3) ** 2).mean(), c.iters, c.lr)
        with torch.no_grad():
            pred = model(grid)
        result.outputs[kind] = pred[:, 0].numpy().astype(np.float64)
        result.mse[kind] = float(((pred + grid**3) ** 2).mean())
        result.trajectories[kind] = _trajectories(kind, model, starts, c.depth, c.steps_per_layer)[:, :, 0]
        if kind == "flow":
            states = _trajectories(kind, model, grid, c.depth, c.steps_per_layer)
            result.step_lipschitz = flow_step_lipschitz(f, states, 1.0 / c.steps_per_layer)
    return result


# --------------------------------------------------------------------------------------------------------
# 2-D: nested rings
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RingsConfig:
    """Settings of :func:`fit_rings` (defaults: the full run; depth 15, width 16, tied weights).

    The logits are the final 2-D state itself (class ``k`` scores ``x_N[k]``): no trainable readout, so the
    separation has to be done by the flow, and every model gets the same readout. Any affine readout would
    still classify by a half-plane, so the topological obstruction for first-order flows is the same.
    """

    n_rings: int = 3  # concentric rings, labels alternating 0, 1, 0 from the inside (see fit_rings' notes)
    depth: int = 15  # tied layers
    width: int = 16  # hidden units of f(x) = W2 tanh(W1 x + b)
    gamma: float = 0.95  # momentum (eps = 20 layers)
    v0: str = "zero"  # initial velocity of the momentum net: 0 (or "f": f(x_0))
    noise: float = 0.05  # radial noise of the rings (ring spacing 1)
    n_train: int = 1000
    n_eval: int = 1000  # test points (a fresh draw)
    iters: int = 1000  # full-batch Adam steps per model
    lr: float = 3e-2  # Adam step size, cosine-annealed to 0
    steps_per_layer: int = 4  # Euler steps per unit time of the first-order flow (h = 0.25)
    models: tuple = ("momentum", "flow")  # which models to train ("resnet" too, if wanted)
    n_traj: int = 60  # test points whose trajectories are recorded for the figure
    seed: int = 0  # data (train: seed, test: seed + 1) and initial weights

    def __post_init__(self):
        _check_common(self)
        check_positive_int("n_traj", self.n_traj)
        if check_positive_int("n_rings", self.n_rings) < 2:
            raise ValueError(f"`n_rings` must be >= 2; got {self.n_rings!r}.")


@dataclass
class RingsResult:
    """Outcome of :func:`fit_rings`.

    Attributes
    ----------
    config : RingsConfig
    X_test : ndarray, shape ``(n_eval, 2)``; y_test : ndarray, shape ``(n_eval,)``
    accuracy, train_accuracy : dict str -> float
        Fraction of test / training points whose final state's larger coordinate is their label.
    train_loss : dict str -> float
        Final cross-entropy (nats).
    final_states : dict str -> ndarray, shape ``(n_eval, 2)``
        ``x_N`` of the test points (the logits).
    trajectories : dict str -> ndarray, shape ``(depth + 1, n_traj, 2)``
        Positions after each layer for the first ``n_traj`` test points.
    step_lipschitz : float
        :func:`flow_step_lipschitz` of the trained first-order flow (``nan`` if it was not trained); ``< 1``
        certifies that its Euler map is injective on the states it visits, like the exact flow.
    """

    config: RingsConfig
    X_test: np.ndarray
    y_test: np.ndarray
    accuracy: dict = field(default_factory=dict)
    train_accuracy: dict = field(default_factory=dict)
    train_loss: dict = field(default_factory=dict)
    final_states: dict = field(default_factory=dict)
    trajectories: dict = field(default_factory=dict)
    step_lipschitz: float = float("nan")


def fit_rings(config: RingsConfig | None = None) -> RingsResult:
    """Classify nested rings with a momentum net and a first-order flow (tied weights, state = logits).

    Data: :func:`~ode_momentum.data.make_rings` (radii ``1 .. n_rings``, labels alternating). Every model
    starts from the same :class:`TanhMLP` ``f(x) = W2 tanh(W1 x + b)`` (2 -> width -> 2, no output bias) and
    is trained by full-batch Adam on the cross-entropy of its final state ``x_N`` (float32, deterministic
    given ``config.seed``).

    Notes
    -----
    The obstruction for first-order flows is topological: a homeomorphism of the plane keeps each ring
    inside the next, so no half-plane can hold the outer ring while the inner one lies in the other. It
    forbids 100% accuracy, not, by itself, a high one: a flow can stretch a short arc of the outer ring
    around the inner one. With two rings a trained flow does exactly that and reaches about 98% (seed 0,
    this setup); with three rings (the default) it would need such a pocket inside a pocket, and it stays at
    the majority-class rate, 2/3.

    Parameters
    ----------
    config : RingsConfig, optional

    Returns
    -------
    RingsResult

    References
    ----------
    Sander et al., ICML 2021, section 4 (nested rings); Dupont, Doucet, Teh, "Augmented Neural ODEs",
    NeurIPS 2019 (the homeomorphism argument).
    """
    config = RingsConfig() if config is None else config
    if not isinstance(config, RingsConfig):
        raise TypeError(f"`config` must be a RingsConfig; got {type(config).__name__}.")
    c = config
    X, y = make_rings(c.n_train, n_rings=c.n_rings, noise=c.noise, seed=c.seed)
    X_test, y_test = make_rings(c.n_eval, n_rings=c.n_rings, noise=c.noise, seed=c.seed + 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(c.seed)
        f0 = TanhMLP(2, c.width, out_bias=False)
    result = RingsResult(c, X_test.numpy().astype(np.float64), y_test.numpy())
    loss_fn = lambda out: nn.functional.cross_entropy(out, y)  # noqa: E731
    for kind in c.models:
        f = copy.deepcopy(f0)
        model = _build(kind, f, c)
        result.train_loss[kind] = _train(model, X, loss_fn, c.iters, c.lr)
        with torch.no_grad():
            out_test, out_train = model(X_test), model(X)
        result.accuracy[kind] = float((out_test.argmax(dim=1) == y_test).float().mean())
        result.train_accuracy[kind] = float((out_train.argmax(dim=1) == y).float().mean())
        result.final_states[kind] = out_test.numpy().astype(np.float64)
        result.trajectories[kind] = _trajectories(kind, model, X_test[: c.n_traj], c.depth, c.steps_per_layer)
        if kind == "flow":
            states = _trajectories(kind, model, torch.cat([X, X_test]), c.depth, c.steps_per_layer)
            result.step_lipschitz = flow_step_lipschitz(f, states, 1.0 / c.steps_per_layer)
    return result


# --------------------------------------------------------------------------------------------------------
# Figures (matplotlib's object API: no global pyplot state)
# --------------------------------------------------------------------------------------------------------

_LABELS = {"momentum": "momentum net", "flow": "first-order flow", "resnet": "ResNet (gamma = 0)"}


def plot_cubic(result: CubicResult):
    """Fitted maps against ``-x^3``, and position trajectories against depth for each trained model.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    kinds = list(result.outputs)
    fig = Figure(figsize=(4 * (1 + len(kinds)), 3.6), layout="constrained")
    axes = fig.subplots(1, 1 + len(kinds))
    ax = axes[0]
    ax.plot(result.grid, -result.grid**3, "k--", label="target -x^3")
    for kind in kinds:
        ax.plot(result.grid, result.outputs[kind], label=f"{_LABELS[kind]} (MSE {result.mse[kind]:.3f})")
    ax.set(xlabel="input x_0", ylabel="output x_N", title="Fitted maps")
    ax.legend(fontsize=8)
    depth = result.config.depth
    for ax, kind in zip(axes[1:], kinds):
        traj = result.trajectories[kind]  # (depth + 1, n_traj)
        colors = _cmap()(np.linspace(0, 1, traj.shape[1]))
        for j in range(traj.shape[1]):
            ax.plot(np.arange(depth + 1), traj[:, j], color=colors[j], lw=1)
        ax.plot([], [], color=colors[-1], label="x_0 = 1")
        ax.plot([], [], color=colors[0], label="x_0 = -1")
        ax.set(xlabel="layer n (unit time)", ylabel="x_n", title=f"Trajectories: {_LABELS[kind]}")
        ax.legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig


def plot_rings(result: RingsResult):
    """Test data, and for each model the final states (logits) with a few trajectories, coloured by label.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    kinds = list(result.accuracy)
    fig = Figure(figsize=(4 * (1 + len(kinds)), 4), layout="constrained")
    axes = fig.subplots(1, 1 + len(kinds))
    colors = np.array(["tab:blue", "tab:orange"])
    y = result.y_test
    for label in (0, 1):
        axes[0].scatter(*result.X_test[y == label].T, s=4, c=colors[label], label=f"class {label}")
    axes[0].set(xlabel="x_0[0]", ylabel="x_0[1]", title=f"{result.config.n_rings} nested rings (test)")
    axes[0].legend(fontsize=8, loc="upper right")
    n_traj = result.config.n_traj
    for ax, kind in zip(axes[1:], kinds):
        traj = result.trajectories[kind]  # (depth + 1, n_traj, 2)
        for j in range(n_traj):
            ax.plot(traj[:, j, 0], traj[:, j, 1], color=colors[y[j]], lw=0.5, alpha=0.5)
        final = result.final_states[kind]
        for label in (0, 1):
            ax.scatter(*final[y == label].T, s=4, c=colors[label], label=f"class {label}")
        lo = min(final.min(), traj.min())
        hi = max(final.max(), traj.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="decision boundary")
        ax.set(xlabel="x_N[0] (logit of class 0)", ylabel="x_N[1] (logit of class 1)",
               title=f"{_LABELS[kind]}: test accuracy {result.accuracy[kind]:.1%}")
        ax.legend(fontsize=8, loc="upper left")
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig


def _cmap():
    from matplotlib import colormaps

    return colormaps["coolwarm"]
