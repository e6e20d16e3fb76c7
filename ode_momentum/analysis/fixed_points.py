"""Fixed points: Jacobian determinants of one layer, the heavy-ball view, and learning to optimise.

One Momentum ResNet layer maps the phase-space state ``(x, v)`` (dimension ``2 d``) to ``(x', v')``::

    v' = gamma v + (1 - gamma) f(x),    x' = x + v'

Its Jacobian is ``[[I + (1 - gamma) J_f, gamma I], [(1 - gamma) J_f, gamma I]]`` (blocks ``d x d``, order
``(x, v)``), whose determinant is ``gamma^d`` for every ``f``: the layer contracts phase-space volume, so a
stack can pull a set of initial states onto a fixed point. An additive-coupling RevNet layer
(:class:`~ode_momentum.nn.AdditiveCoupling`) has determinant exactly 1 and cannot.

With ``f = -eta grad F`` the momentum layer is Polyak's heavy-ball step ``x_{k+1} = x_k - alpha grad F(x_k) +
beta (x_k - x_{k-1})`` with ``alpha = (1 - gamma) eta``, ``beta = gamma``; on a quadratic it converges
linearly, while the undamped RevNet analogue ``v <- v - alpha grad F(x)``, ``x <- x + v`` oscillates forever.

Reference: Sander, Ablin, Blondel, Peyré, "Momentum Residual Neural Networks", ICML 2021, section 3.3
("Momentum ResNets can be used to learn fixed points"); Polyak 1964.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .._checks import check_gamma, check_positive_int, check_real, check_tensor
from ..data.rings import check_seed
from ..nn.momentum_resnet import MomentumResNet
from ..nn.revnet import AdditiveCoupling, RevNetStack

__all__ = [
    "GradientMLP",
    "HeavyBallResult",
    "L2OConfig",
    "L2OResult",
    "LayerDeterminant",
    "QuadraticGradient",
    "QuadraticProblems",
    "learning_to_optimise",
    "heavy_ball",
    "momentum_iterates",
    "momentum_layer_det",
    "plot_heavy_ball",
    "plot_learning_to_optimise",
    "random_quadratics",
    "revnet_iterates",
    "revnet_layer_det",
]


# --------------------------------------------------------------------------------------------------------
# Iterating a trained stack layer by layer (also beyond its depth: layer n uses functions[n mod depth])
# --------------------------------------------------------------------------------------------------------


def momentum_iterates(model: MomentumResNet, x: torch.Tensor, *args, v: torch.Tensor | None = None,
                      n_layers: int | None = None):
    """Every state ``(x_n, v_n)``, ``n = 0 .. n_layers``, of a :class:`~ode_momentum.MomentumResNet`.

    Layer ``n`` applies ``model.functions[n mod depth]`` with the model's ``gamma`` (through a one-layer
    ``MomentumResNet`` sharing the module, differentiated by backprop), so ``n_layers > depth`` runs a
    tied-weight net deeper than it was trained.

    Parameters
    ----------
    model : MomentumResNet
    x : Tensor, shape ``(batch, *features)``, floating
        Input ``x_0``.
    *args
        Extra arguments passed to every residual function (as in ``model(x, *args)``).
    v : Tensor, optional
        Initial velocity ``v_0``; default ``model.init_function(x)`` or zeros.
    n_layers : int, optional
        Number of layers to apply, ``>= 1``; default ``model.depth``.

    Returns
    -------
    xs, vs : Tensor, shape ``(n_layers + 1, batch, *features)``
        Positions and velocities, layer first (``xs[0] = x``).

    Raises
    ------
    TypeError
        If ``model`` is not a ``MomentumResNet``.
    ValueError
        If ``n_layers < 1``.
    """
    if not isinstance(model, MomentumResNet):
        raise TypeError(f"`model` must be a MomentumResNet; got {type(model).__name__}.")
    n_layers = model.depth if n_layers is None else check_positive_int("n_layers", n_layers)
    layers = {}
    for f in model.functions:
        if id(f) not in layers:
            layers[id(f)] = MomentumResNet([f], model.gamma, residual=model.residual, gradient="backprop")
    if v is None:
        v = model.init_function(x) if model.init_function is not None else torch.zeros_like(x)
    xs, vs = [x], [v]
    for n in range(n_layers):
        x, v = layers[id(model.functions[n % model.depth])].forward_state(x, v, *args)
        xs.append(x)
        vs.append(v)
    return torch.stack(xs), torch.stack(vs)


def revnet_iterates(model: RevNetStack, x1: torch.Tensor, x2: torch.Tensor, *args, n_layers: int | None = None):
    """Every state ``(x1_n, x2_n)``, ``n = 0 .. n_layers``, of a :class:`~ode_momentum.nn.RevNetStack`.

    Block ``n`` is ``model.blocks[n mod depth]``, so ``n_layers > depth`` runs a tied-weight stack deeper than
    it was trained.

    Returns
    -------
    x1s, x2s : Tensor, shape ``(n_layers + 1, *x1.shape)`` and ``(n_layers + 1, *x2.shape)``

    Raises
    ------
    TypeError
        If ``model`` is not a ``RevNetStack``.
    ValueError
        If ``n_layers < 1``.
    """
    if not isinstance(model, RevNetStack):
        raise TypeError(f"`model` must be a RevNetStack; got {type(model).__name__}.")
    n_layers = model.depth if n_layers is None else check_positive_int("n_layers", n_layers)
    x1s, x2s = [x1], [x2]
    for n in range(n_layers):
        x1, x2 = model.blocks[n % model.depth](x1, x2, *args)
        x1s.append(x1)
        x2s.append(x2)
    return torch.stack(x1s), torch.stack(x2s)


# --------------------------------------------------------------------------------------------------------
# Jacobian determinants of one layer
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerDeterminant:
    """Determinant of one layer's Jacobian in phase space, measured by autograd.

    Attributes
    ----------
    det : float
        ``det J`` of the layer map at the given state (dimensionless).
    expected : float
        ``gamma^d`` for a momentum layer, ``1`` for an additive coupling.
    dim : int
        ``d``, the number of features of one half of the state (``J`` is ``2d x 2d``).
    jacobian : Tensor, shape ``(2 d, 2 d)``
        The Jacobian, order ``(x, v)`` for a momentum layer and ``(x1, x2)`` for a coupling.
    """

    det: float
    expected: float
    dim: int
    jacobian: torch.Tensor = field(repr=False)

    @property
    def error(self) -> float:
        """``|det - expected|``."""
        return abs(self.det - self.expected)


def _state_jacobian(layer_map, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Jacobian of ``(a, b) -> layer_map(a[None], b[None])`` flattened to ``(2d, 2d)``."""
    d = a.numel()
    shape = a.shape

    def phase_map(z):  # z: (2d,)
        out_a, out_b = layer_map(z[:d].reshape(1, *shape), z[d:].reshape(1, *shape))
        return torch.cat([out_a.reshape(-1), out_b.reshape(-1)])

    z = torch.cat([a.detach().reshape(-1), b.detach().reshape(-1)])
    with torch.enable_grad():
        return torch.autograd.functional.jacobian(phase_map, z)


def _check_state(name: str, value: torch.Tensor) -> torch.Tensor:
    check_tensor(name, value)
    if not value.is_floating_point() or value.numel() == 0:
        raise TypeError(
            f"`{name}` must be a non-empty floating-point tensor (one sample, no batch dimension); got dtype "
            f"{value.dtype} and shape {tuple(value.shape)}. Use float64 for determinants to 1e-12."
        )
    return value


def momentum_layer_det(f: nn.Module, gamma: float, x: torch.Tensor, v: torch.Tensor | None = None,
                       *args) -> LayerDeterminant:
    """Determinant of the Jacobian of one Momentum ResNet layer ``(x, v) -> (x', v')``, by autograd.

    ``v' = gamma v + (1 - gamma) f(x)``, ``x' = x + v'``; in theory ``det = gamma^d`` for any ``f`` (the
    ``J_f`` terms cancel in the block determinant).

    Parameters
    ----------
    f : nn.Module
        Residual function, called on a batch of one, ``f(x[None], *args)``.
    gamma : float in [0, 1]
    x, v : Tensor, shape ``(*features)`` (one sample, no batch dimension), floating
        The state where the Jacobian is taken (``v`` defaults to zeros); ``d = x.numel()``. The dtype of
        ``f``'s parameters; float64 gives determinants to about 1e-12.
    *args
        Extra arguments of ``f``.

    Returns
    -------
    LayerDeterminant
        ``expected = gamma ** d``.

    Raises
    ------
    TypeError
        If ``x`` or ``v`` is not a floating tensor.
    ValueError
        If ``gamma`` lies outside [0, 1] or ``v`` has another shape than ``x``.

    References
    ----------
    Sander et al., ICML 2021, section 3.3.
    """
    gamma = check_gamma(gamma)
    x = _check_state("x", x)
    v = torch.zeros_like(x) if v is None else _check_state("v", v)
    if v.shape != x.shape:
        raise ValueError(f"`v` must have the shape of `x`, {tuple(x.shape)}; got {tuple(v.shape)}.")
    layer = MomentumResNet([f], gamma, gradient="backprop")
    jac = _state_jacobian(lambda a, b: layer.forward_state(a, b, *args), x, v)
    d = x.numel()
    return LayerDeterminant(float(torch.linalg.det(jac)), gamma**d, d, jac)


def revnet_layer_det(block: AdditiveCoupling, x1: torch.Tensor, x2: torch.Tensor, *args) -> LayerDeterminant:
    """Determinant of the Jacobian of one additive-coupling layer ``(x1, x2) -> (y1, y2)``, by autograd.

    ``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)``; in theory ``det = 1`` (a product of unit-triangular maps).

    Parameters
    ----------
    block : AdditiveCoupling
    x1, x2 : Tensor, shape ``(*features)`` (one sample each, one shape), floating

    Returns
    -------
    LayerDeterminant
        ``expected = 1``.

    Raises
    ------
    TypeError
        If ``block`` is not an ``AdditiveCoupling`` or a state is not a floating tensor.
    ValueError
        If ``x1`` and ``x2`` differ in shape.

    References
    ----------
    Gomez et al., NeurIPS 2017; Sander et al., ICML 2021, section 3.3.
    """
    if not isinstance(block, AdditiveCoupling):
        raise TypeError(f"`block` must be an AdditiveCoupling; got {type(block).__name__}.")
    x1, x2 = _check_state("x1", x1), _check_state("x2", x2)
    if x1.shape != x2.shape:
        raise ValueError(f"`x2` must have the shape of `x1`, {tuple(x1.shape)}; got {tuple(x2.shape)}.")
    jac = _state_jacobian(lambda a, b: block(a, b, *args), x1, x2)
    return LayerDeterminant(float(torch.linalg.det(jac)), 1.0, x1.numel(), jac)


# --------------------------------------------------------------------------------------------------------
# Quadratic problems and the heavy-ball view
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuadraticProblems:
    """A batch of quadratics ``F(x) = 1/2 x^T A x - b^T x`` with minimisers ``x* = A^{-1} b``.

    Attributes
    ----------
    A : Tensor, shape ``(n, d, d)``
        Symmetric positive definite, eigenvalues in ``[1 / cond, 1]``.
    b : Tensor, shape ``(n, d)``
    x_star : Tensor, shape ``(n, d)``
        The minimisers.
    eigenvalues : Tensor, shape ``(n, d)``
        Eigenvalues of each ``A``.
    """

    A: torch.Tensor
    b: torch.Tensor
    x_star: torch.Tensor
    eigenvalues: torch.Tensor

    def gradient(self, x: torch.Tensor) -> torch.Tensor:
        """``grad F(x) = A x - b`` for ``x`` of shape ``(n, d)``."""
        return torch.einsum("nij,nj->ni", self.A, x) - self.b


def random_quadratics(n: int, d: int, *, cond: float = 10.0, seed: int = 0,
                      dtype: torch.dtype = torch.float64) -> QuadraticProblems:
    """Sample ``n`` random ``d``-dimensional quadratics with condition numbers at most ``cond``.

    ``A = Q diag(lambda) Q^T`` with ``Q`` Haar-orthogonal (QR of a Gaussian matrix, signs fixed) and
    ``lambda = cond^(u - 1)``, ``u ~ U[0, 1)`` (log-uniform in ``[1/cond, 1]``); ``x* ~ N(0, I)``,
    ``b = A x*``. Drawn from a private ``torch.Generator`` seeded with ``seed``.

    Parameters
    ----------
    n, d : int
        Number of problems and dimension, ``>= 1``.
    cond : float
        Largest condition number, ``>= 1``.
    seed : int
        Seed, ``>= 0``; the global random state is not touched.
    dtype : torch.dtype
        Floating dtype of the tensors (default float64).

    Returns
    -------
    QuadraticProblems

    Raises
    ------
    TypeError, ValueError
        For a non-positive ``n`` or ``d``, ``cond < 1``, a negative seed or a non-floating dtype.
    """
    n, d = check_positive_int("n", n), check_positive_int("d", d)
    cond = check_real("cond", cond)
    if cond < 1:
        raise ValueError(f"`cond` must be >= 1 (largest over smallest eigenvalue); got {cond!r}. Try 10.")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"`dtype` must be a floating torch.dtype; got {dtype!r}. Use torch.float64.")
    gen = torch.Generator().manual_seed(check_seed(seed))
    q, r = torch.linalg.qr(torch.randn(n, d, d, generator=gen, dtype=torch.float64))  # (n, d, d)
    q = q * torch.sign(torch.diagonal(r, dim1=1, dim2=2)).unsqueeze(1)  # Haar measure
    lam = cond ** (torch.rand(n, d, generator=gen, dtype=torch.float64) - 1.0)  # (n, d) in [1/cond, 1]
    A = q @ torch.diag_embed(lam) @ q.transpose(1, 2)
    A = 0.5 * (A + A.transpose(1, 2))
    x_star = torch.randn(n, d, generator=gen, dtype=torch.float64)
    b = torch.einsum("nij,nj->ni", A, x_star)
    return QuadraticProblems(A.to(dtype), b.to(dtype), x_star.to(dtype), lam.to(dtype))


class QuadraticGradient(nn.Module):
    """Residual ``f(x; A, b) = -eta (A x - b) = -eta grad F(x)`` of a batch of quadratics (no parameters).

    Parameters
    ----------
    eta : float
        Step length ``> 0`` (units of ``x`` per unit of gradient).
    """

    def __init__(self, eta: float):
        super().__init__()
        self.eta = check_real("eta", eta)
        if self.eta <= 0:
            raise ValueError(f"`eta` must be > 0 (a step length); got {eta!r}.")

    def forward(self, x: torch.Tensor, A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return -self.eta * (torch.einsum("nij,nj->ni", A, x) - b)


@dataclass(frozen=True)
class HeavyBallResult:
    """Iterates of a momentum net with ``f = -eta grad F`` (heavy ball) and of its RevNet analogue.

    Attributes
    ----------
    gamma, eta : float
        Momentum and step; heavy-ball parameters ``alpha = (1 - gamma) eta``, ``beta = gamma``.
    distance_momentum, distance_revnet : ndarray, shape ``(n_steps + 1, n)``
        ``||x_k - x*|| / ||x*||`` per iterate and problem.
    predicted_rate : ndarray, shape ``(n,)``
        Spectral radius of the heavy-ball iteration matrix per problem, ``max_lambda rho([[1 - alpha lambda,
        gamma], [-alpha lambda, gamma]])``: the asymptotic contraction per step.
    fitted_rate : ndarray, shape ``(n,)``
        ``exp`` of the least-squares slope of ``log distance_momentum`` against ``k`` over the second half of
        the iterates whose distance stays above ``RATE_FIT_FLOOR`` (past the transient, above rounding).
    """

    gamma: float
    eta: float
    distance_momentum: np.ndarray
    distance_revnet: np.ndarray
    predicted_rate: np.ndarray
    fitted_rate: np.ndarray


# A float64 iterate is meaningful while its distance to x* stays well above the rounding of x* (1e-16);
# rates are fitted above this floor.
RATE_FIT_FLOOR = 1e-12


@torch.no_grad()
def heavy_ball(problems: QuadraticProblems, *, gamma: float, eta: float, n_steps: int,
               x0: torch.Tensor | None = None) -> HeavyBallResult:
    """Run a Momentum ResNet with ``f = -eta grad F`` on quadratics, and its volume-preserving RevNet twin.

    Momentum (heavy ball, Polyak 1964)::

        v_{k+1} = gamma v_k - (1 - gamma) eta grad F(x_k),   x_{k+1} = x_k + v_{k+1}

    RevNet analogue, an :class:`~ode_momentum.nn.AdditiveCoupling` with ``F = -alpha grad F``,
    ``G = identity`` and the same ``alpha = (1 - gamma) eta`` (no damping)::

        v_{k+1} = v_k - alpha grad F(x_k),   x_{k+1} = x_k + v_{k+1}

    Both start at ``x0`` (default 0) at rest. For ``0 < alpha lambda < 2 (1 + gamma)`` on every eigenvalue the
    heavy ball converges at the predicted rate; the RevNet map has determinant 1 and oscillates.

    Parameters
    ----------
    problems : QuadraticProblems
    gamma : float in (0, 1)
    eta : float > 0
    n_steps : int >= 1
    x0 : Tensor, shape ``(n, d)``, optional

    Returns
    -------
    HeavyBallResult

    Raises
    ------
    TypeError, ValueError
        For a bad ``gamma``, ``eta``, ``n_steps`` or ``x0``.

    References
    ----------
    Polyak, "Some methods of speeding up the convergence of iteration methods", 1964; Sander et al., ICML
    2021, section 3.3.
    """
    if not isinstance(problems, QuadraticProblems):
        raise TypeError(f"`problems` must be QuadraticProblems; got {type(problems).__name__}. Use random_quadratics.")
    gamma = check_gamma(gamma)
    n_steps = check_positive_int("n_steps", n_steps)
    step = QuadraticGradient(eta)
    alpha = (1.0 - gamma) * step.eta
    A, b, x_star = problems.A, problems.b, problems.x_star
    x0 = torch.zeros_like(x_star) if x0 is None else check_tensor("x0", x0)
    if x0.shape != x_star.shape:
        raise ValueError(f"`x0` must have shape {tuple(x_star.shape)} (problems, d); got {tuple(x0.shape)}.")

    net = MomentumResNet([step], gamma, gradient="backprop")
    xs, _ = momentum_iterates(net, x0, A, b, n_layers=n_steps)
    revnet = RevNetStack([AdditiveCoupling(QuadraticGradient(alpha), nn.Identity())])
    _, xs_rev = revnet_iterates(revnet, torch.zeros_like(x0), x0, A, b, n_layers=n_steps)

    scale = x_star.norm(dim=1)  # (n,)
    dist = ((xs - x_star).norm(dim=2) / scale).cpu().numpy()  # (n_steps + 1, n)
    dist_rev = ((xs_rev - x_star).norm(dim=2) / scale).cpu().numpy()

    lam = problems.eigenvalues.to(torch.float64).cpu().numpy()  # (n, d)
    predicted = np.empty(lam.shape[0])
    for i, lam_i in enumerate(lam):
        rho = [np.abs(np.linalg.eigvals([[1 - alpha * l, gamma], [-alpha * l, gamma]])).max() for l in lam_i]
        predicted[i] = max(rho)
    fitted = np.empty(lam.shape[0])
    for i in range(lam.shape[0]):
        above = np.flatnonzero(dist[:, i] > RATE_FIT_FLOOR)  # iterates above the rounding floor
        k = above[len(above) // 2:]  # their second half: past the transient
        fitted[i] = math.exp(np.polyfit(k, np.log(dist[k, i]), 1)[0]) if len(k) >= 2 else float("nan")
    return HeavyBallResult(gamma, step.eta, dist, dist_rev, predicted, fitted)


# --------------------------------------------------------------------------------------------------------
# Learning to optimise
# --------------------------------------------------------------------------------------------------------


class GradientMLP(nn.Module):
    """Learned update ``f(x; A, b) = -W2 tanh(W1 grad F(x))``, ``grad F(x) = A x - b`` (no biases).

    The update vanishes where the gradient does, so the minimiser ``x*`` is a fixed point of any stack built
    from it (with zero velocity); whether the fixed point *attracts* is up to the architecture.

    Parameters
    ----------
    d : int
        Problem dimension.
    width : int
        Hidden units; ``2 d width`` parameters.
    """

    def __init__(self, d: int, width: int):
        super().__init__()
        self.inp = nn.Linear(check_positive_int("d", d), check_positive_int("width", width), bias=False)
        self.out = nn.Linear(width, d, bias=False)

    def forward(self, x: torch.Tensor, A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        g = torch.einsum("nij,nj->ni", A, x) - b  # (n, d)
        return -self.out(torch.tanh(self.inp(g)))


class _StateMLP(nn.Module):
    """``G(z) = W4 tanh(W3 z)`` (no biases, so ``G(0) = 0``); ignores the problem's data."""

    def __init__(self, d: int, width: int):
        super().__init__()
        self.inp = nn.Linear(d, width, bias=False)
        self.out = nn.Linear(width, d, bias=False)

    def forward(self, z: torch.Tensor, *problem) -> torch.Tensor:
        return self.out(torch.tanh(self.inp(z)))


@dataclass(frozen=True)
class L2OConfig:
    """Settings of :func:`learning_to_optimise` (the defaults are the full run)."""

    d: int = 8  # problem dimension
    width: int = 32  # hidden units of the momentum net's GradientMLP; the RevNet's F and G get width / 2 each
    depth: int = 10  # training depth N (tied weights: one learned update applied N times)
    gamma: float = 0.5  # momentum of the momentum net; its phase-space contraction per layer is gamma^d
    cond: float = 10.0  # condition number bound of the random quadratics
    n_train: int = 512  # training problems (a fresh draw of n_test problems is used for testing)
    n_test: int = 512
    iters: int = 500  # full-batch Adam steps, cosine-annealed learning rate
    lr: float = 1e-2
    deeper: int = 5  # evaluate up to deeper * depth layers
    seed: int = 0

    def __post_init__(self):
        for name in ("d", "depth", "n_train", "n_test", "iters", "deeper"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("width", self.width)
        if self.width % 2:
            raise ValueError(
                f"`width` must be even (the RevNet splits it between F and G for an equal parameter count); "
                f"got {self.width!r}."
            )
        check_gamma(self.gamma, allow_zero=False)
        if check_real("cond", self.cond) < 1:
            raise ValueError(f"`cond` must be >= 1; got {self.cond!r}.")
        if check_real("lr", self.lr) <= 0:
            raise ValueError(f"`lr` must be > 0; got {self.lr!r}.")
        check_seed(self.seed)


@dataclass(frozen=True)
class L2OResult:
    """Outcome of :func:`learning_to_optimise`.

    Attributes
    ----------
    config : L2OConfig
    depths : ndarray, shape ``(deeper * depth + 1,)``
        Layer counts ``0 .. deeper * depth``.
    error_momentum, error_revnet : ndarray, shape ``(deeper * depth + 1,)``
        Mean relative distance ``||x_n - x*|| / ||x*||`` over the test problems after ``n`` layers.
    n_params_momentum, n_params_revnet : int
        Trainable parameters (equal by construction).
    train_loss_momentum, train_loss_revnet : float
        Final training loss (mean squared relative error at the training depth).
    """

    config: L2OConfig
    depths: np.ndarray
    error_momentum: np.ndarray
    error_revnet: np.ndarray
    n_params_momentum: int
    n_params_revnet: int
    train_loss_momentum: float
    train_loss_revnet: float

    def at(self, n_layers: int) -> tuple[float, float]:
        """``(error_momentum, error_revnet)`` after ``n_layers`` layers."""
        return float(self.error_momentum[n_layers]), float(self.error_revnet[n_layers])


def learning_to_optimise(config: L2OConfig | None = None) -> L2OResult:
    """Train a momentum net and a RevNet with equal parameter counts to map a quadratic to its minimiser.

    Problems are :func:`random_quadratics` (``cond``-conditioned, float32); every net starts at ``x_0 = 0``
    with zero velocity and sees the problem only through its gradient:

    - momentum: ``MomentumResNet([f] * N, gamma)``, ``f`` a :class:`GradientMLP` of width ``width``;
    - RevNet: ``RevNetStack([AdditiveCoupling(F, G)] * N)`` on ``(z, x)``: ``z <- z + F(x)``,
      ``x <- x + G(z)``, ``F`` a ``GradientMLP`` and ``G(z) = W4 tanh(W3 z)`` of width ``width / 2`` each.

    Both have ``x*`` (with zero velocity / ``z = 0``) as a fixed point; the loss is the mean squared relative
    error ``||x_N - x*||^2 / ||x*||^2`` at the training depth ``N``, minimised by full-batch Adam with the
    same schedule. After training both are run to ``deeper * N`` layers on fresh test problems: the momentum
    net, whose layers contract phase-space volume by ``gamma^d``, keeps converging; the RevNet (volume
    preserving) cannot make the fixed point attracting and keeps oscillating.

    Training is deterministic given ``config.seed`` (weights drawn inside ``torch.random.fork_rng``).

    Parameters
    ----------
    config : L2OConfig, optional
        Default ``L2OConfig()``.

    Returns
    -------
    L2OResult

    References
    ----------
    Sander et al., ICML 2021, section 3.3; Andrychowicz et al., "Learning to learn by gradient descent by
    gradient descent", NeurIPS 2016 (learned optimisers fed with gradients).
    """
    config = L2OConfig() if config is None else config
    if not isinstance(config, L2OConfig):
        raise TypeError(f"`config` must be an L2OConfig; got {type(config).__name__}.")
    c = config
    train = random_quadratics(c.n_train, c.d, cond=c.cond, seed=c.seed, dtype=torch.float32)
    test = random_quadratics(c.n_test, c.d, cond=c.cond, seed=c.seed + 1, dtype=torch.float32)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(c.seed)
        f = GradientMLP(c.d, c.width)
        momentum = MomentumResNet([f] * c.depth, c.gamma, gradient="backprop")
        block = AdditiveCoupling(GradientMLP(c.d, c.width // 2), _StateMLP(c.d, c.width // 2))
        revnet = RevNetStack([block] * c.depth)

    def rel_error(xs, p):  # (..., n) relative distances
        return (xs - p.x_star).norm(dim=-1) / p.x_star.norm(dim=-1)

    x0 = torch.zeros_like(train.x_star)  # (n_train, d): every problem starts at 0, at rest
    outputs = {
        "momentum": (momentum, lambda: momentum(x0, train.A, train.b)),
        "revnet": (revnet, lambda: revnet.forward_state(torch.zeros_like(x0), x0, train.A, train.b)[1]),
    }
    losses = {}
    for name, (model, output) in outputs.items():
        opt = torch.optim.Adam(model.parameters(), lr=c.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=c.iters)
        for _ in range(c.iters):
            opt.zero_grad(set_to_none=True)
            loss = (rel_error(output(), train) ** 2).mean()
            loss.backward()
            opt.step()
            schedule.step()
        losses[name] = loss.item()

    n_eval = c.deeper * c.depth
    with torch.no_grad():
        x0 = torch.zeros_like(test.x_star)
        xs_m, _ = momentum_iterates(momentum, x0, test.A, test.b, n_layers=n_eval)
        _, xs_r = revnet_iterates(revnet, torch.zeros_like(x0), x0, test.A, test.b, n_layers=n_eval)
        err_m = rel_error(xs_m, test).mean(dim=1).numpy()
        err_r = rel_error(xs_r, test).mean(dim=1).numpy()
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    return L2OResult(c, np.arange(n_eval + 1), err_m.astype(np.float64), err_r.astype(np.float64),
                     count(momentum), count(revnet), losses["momentum"], losses["revnet"])


# --------------------------------------------------------------------------------------------------------
# Figures (matplotlib's object API: no global pyplot state)
# --------------------------------------------------------------------------------------------------------


def _figure(figsize):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def plot_heavy_ball(result: HeavyBallResult, *, problem: int = 0):
    """Distance to the minimiser against iterations: heavy ball (momentum net) vs its RevNet analogue.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = _figure((6, 3.5))
    ax = fig.subplots()
    k = np.arange(result.distance_momentum.shape[0])
    ax.semilogy(k, result.distance_momentum[:, problem], label=f"momentum net (heavy ball), gamma={result.gamma:g}")
    ax.semilogy(k, result.distance_revnet[:, problem], label="RevNet analogue (no damping)")
    ax.semilogy(k, result.predicted_rate[problem] ** k, "k--", lw=0.8, label="predicted rate")
    ax.set(xlabel="layer (iteration) k", ylabel="||x_k - x*|| / ||x*||",
           title=f"f = -eta grad F on a quadratic (eta={result.eta:g})")
    ax.set_ylim(bottom=max(1e-16, float(result.distance_momentum[:, problem].min()) / 10))
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_learning_to_optimise(result: L2OResult):
    """Mean relative error against depth for the trained momentum net and RevNet, training depth marked.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = _figure((6, 3.5))
    ax = fig.subplots()
    c = result.config
    ax.semilogy(result.depths, result.error_momentum,
                label=f"momentum net, gamma={c.gamma:g} ({result.n_params_momentum} params)")
    ax.semilogy(result.depths, result.error_revnet, label=f"RevNet ({result.n_params_revnet} params)")
    ax.axvline(c.depth, color="k", ls="--", lw=0.8, label=f"training depth N={c.depth}")
    ax.set(xlabel="layers applied", ylabel="mean ||x_n - x*|| / ||x*||",
           title="Learning to optimise: run deeper than trained")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig
