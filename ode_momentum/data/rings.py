"""Nested rings: the toy set on which first-order models fail and Momentum ResNets succeed."""

from __future__ import annotations

import math

import torch

from .._checks import check_positive_int, check_real, check_seed


def make_rings(
    n_samples: int = 1000,
    *,
    n_rings: int = 2,
    noise: float = 0.05,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample points on ``n_rings`` concentric circles in the plane, with alternating labels.

    Ring ``k = 0 .. n_rings-1`` has radius ``r_k = k + 1`` and label ``y = k mod 2``; a point on it is::

        x = (r_k + noise * z) * (cos(theta), sin(theta)),   theta ~ U[0, 2 pi),   z ~ N(0, 1)

    The samples are split as evenly as possible between the rings (the first ``n_samples mod n_rings``
    rings get one more) and returned in a random order. The draw uses a private ``torch.Generator`` seeded
    with ``seed``; the global random state is neither read nor changed.

    Parameters
    ----------
    n_samples : int
        Number of points, ``>= 1``.
    n_rings : int
        Number of concentric rings, ``>= 2`` (the paper uses 2 to 4).
    noise : float
        Standard deviation of the Gaussian radial noise, ``>= 0``, in units of the ring spacing (1). Above
        about 0.25 neighbouring rings start to overlap.
    seed : int
        Seed of the private generator, ``>= 0``. The same seed gives the same points.

    Returns
    -------
    X : Tensor, shape ``(n_samples, 2)``, float32
        Points in the plane.
    y : Tensor, shape ``(n_samples,)``, int64
        Labels in ``{0, 1}``, alternating from the innermost ring outwards.

    Raises
    ------
    TypeError
        If ``n_samples``, ``n_rings`` or ``seed`` is not an int, or ``noise`` is not a real number.
    ValueError
        If ``n_samples < 1``, ``n_rings < 2``, ``noise < 0`` or ``seed < 0``.

    References
    ----------
    Sander, Ablin, Blondel, Peyré, "Momentum Residual Neural Networks", ICML 2021, section 4 (nested rings:
    a first-order ODE flow is a homeomorphism and cannot untangle them; a momentum flow can).
    """
    n_samples = check_positive_int("n_samples", n_samples)
    if isinstance(n_rings, bool) or not isinstance(n_rings, int):
        raise TypeError(f"`n_rings` must be an int >= 2; got {n_rings!r} ({type(n_rings).__name__}).")
    if n_rings < 2:
        raise ValueError(
            f"`n_rings` must be >= 2; got {n_rings!r}. One ring has a single label; use n_rings=2 for the "
            "paper's two nested rings."
        )
    noise = check_real("noise", noise)
    if noise < 0:
        raise ValueError(f"`noise` must be >= 0 (a standard deviation); got {noise!r}. Use 0 for exact circles.")
    gen = torch.Generator().manual_seed(check_seed(seed))

    ring = torch.arange(n_samples, dtype=torch.int64) % n_rings  # (n,) balanced ring index
    ring = ring[torch.randperm(n_samples, generator=gen)]
    theta = 2 * math.pi * torch.rand(n_samples, generator=gen, dtype=torch.float64)  # (n,)
    radius = (ring + 1).to(torch.float64) + noise * torch.randn(n_samples, generator=gen, dtype=torch.float64)
    X = torch.stack([radius * torch.cos(theta), radius * torch.sin(theta)], dim=1)  # (n, 2)
    y = ring % 2
    return X.to(torch.float32), y
