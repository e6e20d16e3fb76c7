"""Analysis: pure functions used by the tests, ``theory/`` and the notebooks."""

from .claims import Check, ClaimReport
from .convergence import (
    OrderFit,
    StepLimitStudy,
    depth_trajectories,
    discrete_limit,
    empirical_order,
    eps_limit,
    fixed_gamma_limit,
    step_limit_study,
)
from .linear import (
    LinearFit,
    MinReachable,
    RealLogarithm,
    Representability,
    fit_linear_flow,
    first_zero,
    has_real_logarithm,
    integrate_psi_matrix,
    min_reachable,
    phi,
    psi,
    psi_matrix,
    representable,
)
from .memory import saved_tensor_bytes
from .reversal import DriftReport, ExactRoundTrip, buffer_bound, exact_round_trip, reconstruction_drift
from .problems import Problem, damped_oscillator, forced_pendulum
from .tidy import Table
from .work_precision import work_precision

__all__ = [
    "Check",
    "ClaimReport",
    "DriftReport",
    "ExactRoundTrip",
    "LinearFit",
    "MinReachable",
    "OrderFit",
    "Problem",
    "RealLogarithm",
    "Representability",
    "StepLimitStudy",
    "Table",
    "buffer_bound",
    "damped_oscillator",
    "depth_trajectories",
    "discrete_limit",
    "empirical_order",
    "eps_limit",
    "exact_round_trip",
    "first_zero",
    "fit_linear_flow",
    "fixed_gamma_limit",
    "forced_pendulum",
    "has_real_logarithm",
    "integrate_psi_matrix",
    "min_reachable",
    "phi",
    "psi",
    "psi_matrix",
    "reconstruction_drift",
    "representable",
    "saved_tensor_bytes",
    "step_limit_study",
    "work_precision",
]
