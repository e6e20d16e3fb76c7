"""Reversible additive-coupling networks (RevNets): the volume-preserving baseline of the fixed-point claim."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .._checks import check_tensor


class AdditiveCoupling(nn.Module):
    """One additive-coupling block (Gomez et al. 2017; Dinh et al. 2015)::

        y1 = x1 + F(x2)
        y2 = x2 + G(y1)

    Inverse: ``x2 = y2 - G(y1)``, then ``x1 = y1 - F(x2)``, for any ``F`` and ``G``. The Jacobian of
    ``(x1, x2) -> (y1, y2)`` is a product of two unit-triangular block matrices, so its determinant is exactly 1:
    the block preserves volume, and no stack of such blocks can contract a set of states onto a point.

    In phase-space notation ``(x1, x2) = (v, x)`` one block is ``v <- v + F(x)``, ``x <- x + G(v)``; with ``G``
    the identity it is the momentum rule without damping (``gamma = 1`` with the force rescaled by
    ``1 / (1 - gamma)``), the contrast of Sander et al. 2021, section 3.3.

    Parameters
    ----------
    F, G : nn.Module
        Residual functions. ``F`` maps the ``x2`` half to the shape of ``x1`` and ``G`` maps the ``y1`` half to
        the shape of ``x2``; each is called with the extra arguments of :meth:`forward`.
        ``G = nn.Identity()`` is allowed when the halves have one shape (it then takes no extra arguments).

    Raises
    ------
    TypeError
        If ``F`` or ``G`` is not an ``nn.Module``.

    References
    ----------
    Gomez, Ren, Urtasun, Grosse, "The Reversible Residual Network", NeurIPS 2017, eq. (1);
    Sander, Ablin, Blondel, Peyré, "Momentum Residual Neural Networks", ICML 2021, section 3.3.
    """

    def __init__(self, F: nn.Module, G: nn.Module):
        super().__init__()
        for name, module in (("F", F), ("G", G)):
            if not isinstance(module, nn.Module):
                raise TypeError(
                    f"`{name}` must be an nn.Module; got {type(module).__name__}. Use nn.Identity() for an "
                    "identity coupling."
                )
        self.F = F
        self.G = G

    def _g(self, y1, args, kwargs):
        return self.G(y1) if isinstance(self.G, nn.Identity) else self.G(y1, *args, **kwargs)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(y1, y2)``; ``x1``, ``x2`` are ``(batch, *features)`` halves of the state."""
        y1 = x1 + self.F(x2, *args, **kwargs)
        y2 = x2 + self._g(y1, args, kwargs)
        return y1, y2

    def inverse(self, y1: torch.Tensor, y2: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x1, x2)`` from ``(y1, y2)`` (exact up to rounding, which is not amplified)."""
        x2 = y2 - self._g(y1, args, kwargs)
        x1 = y1 - self.F(x2, *args, **kwargs)
        return x1, x2


class RevNetStack(nn.Module):
    """A stack of :class:`AdditiveCoupling` blocks, differentiated by ordinary autograd.

    :meth:`forward` splits a ``(batch, channels, ...)`` input into two halves along ``dim=1`` (``channels``
    must be even), runs the blocks and concatenates the halves again (memcnn / revlib convention).
    :meth:`forward_state` and :meth:`inverse_state` work on the two halves directly.

    Parameters
    ----------
    blocks : sequence of AdditiveCoupling, length ``N >= 1``
        One module may appear several times (tied weights).

    Raises
    ------
    TypeError
        If a block is not an :class:`AdditiveCoupling`.
    ValueError
        If ``blocks`` is empty.

    References
    ----------
    Gomez et al., NeurIPS 2017; Sander et al., ICML 2021, section 3.3 (RevNets cannot converge to a fixed
    point, Momentum ResNets can).
    """

    def __init__(self, blocks: Iterable[AdditiveCoupling]):
        super().__init__()
        blocks = list(blocks)
        if not blocks:
            raise ValueError("`blocks` is empty; a RevNet stack needs at least one AdditiveCoupling block.")
        for i, block in enumerate(blocks):
            if not isinstance(block, AdditiveCoupling):
                raise TypeError(
                    f"`blocks[{i}]` must be an AdditiveCoupling; got {type(block).__name__}. Wrap residual "
                    "functions as AdditiveCoupling(F, G)."
                )
        self.blocks = nn.ModuleList(blocks)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Return the output for ``x`` of shape ``(batch, 2 c, *rest)``, split as ``x1, x2 = x.chunk(2, 1)``."""
        x = check_tensor("x", x)
        if x.dim() < 2 or x.shape[1] % 2:
            raise ValueError(
                f"`x` must have an even number of channels (dim 1) to be split in two halves; got shape "
                f"{tuple(x.shape)}. Pad a channel, or call forward_state(x1, x2) with your own split."
            )
        x1, x2 = x.chunk(2, dim=1)
        y1, y2 = self.forward_state(x1, x2, *args, **kwargs)
        return torch.cat([y1, y2], dim=1)

    def forward_state(self, x1: torch.Tensor, x2: torch.Tensor, *args, **kwargs):
        """Return ``(y1, y2)`` after every block; ``x1``, ``x2`` are tensors with one batch size."""
        _check_halves("x1", x1, "x2", x2)
        for block in self.blocks:
            x1, x2 = block(x1, x2, *args, **kwargs)
        return x1, x2

    @torch.no_grad()
    def inverse_state(self, y1: torch.Tensor, y2: torch.Tensor, *args, **kwargs):
        """Reconstruct ``(x1, x2)`` from the stack's output halves."""
        _check_halves("y1", y1, "y2", y2)
        for block in reversed(self.blocks):
            y1, y2 = block.inverse(y1, y2, *args, **kwargs)
        return y1, y2


def _check_halves(name1, a, name2, b) -> None:
    check_tensor(name1, a)
    check_tensor(name2, b)
    if a.dim() == 0 or b.dim() == 0 or a.shape[0] != b.shape[0]:
        raise ValueError(
            f"`{name1}` and `{name2}` must be (batch, *features) tensors with one batch size; got shapes "
            f"{tuple(a.shape)} and {tuple(b.shape)}."
        )
