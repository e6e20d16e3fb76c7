"""The residual stacks the benchmark measures: two MLP widths and a small convolutional stack.

Every method wraps the *same* list of residual functions ``f_n`` (one module per layer, untied), built from a
seed without touching the global random state, so all methods compute one model and their gradients are
comparable with one float64 reference.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class StackSpec:
    """One residual-function family and the input it is measured on.

    Attributes
    ----------
    name : str
        Key used in the results (``"mlp64"``, ``"mlp512"``, ``"conv16"``).
    kind : {"mlp", "conv"}
        ``"mlp"``: ``f_n = Linear(w, w) -> Tanh -> Linear(w, w)``. ``"conv"``: ``f_n = Conv2d(c, c, 3, pad 1,
        no bias) -> BatchNorm2d(c) -> ReLU`` (training mode: batch statistics).
    width : int
        Features ``w`` (MLP) or channels ``c`` (conv).
    batch : int
        Batch size of the measured input.
    size : int
        Spatial side of the conv feature maps (ignored for MLPs).
    """

    name: str
    kind: str
    width: int
    batch: int
    size: int = 0

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.kind == "mlp":
            return (self.batch, self.width)  # (B, W)
        return (self.batch, self.width, self.size, self.size)  # (B, C, H, W)

    @property
    def label(self) -> str:
        if self.kind == "mlp":
            return f"MLP width {self.width}, batch {self.batch}"
        return f"conv {self.width} ch, {self.size}x{self.size} maps, batch {self.batch}"

    @property
    def params_per_layer(self) -> int:
        """Parameters of one residual function."""
        return sum(p.numel() for p in _block(self).parameters())

    def as_dict(self) -> dict:
        return {**asdict(self), "input_shape": list(self.input_shape), "label": self.label,
                "params_per_layer": self.params_per_layer}


# The three stacks. Batches are moderate so that the full grid fits in well under an hour on 2 CPU
# cores; every stack's state has 16k-131k elements.
STACKS = {
    "mlp64": StackSpec("mlp64", "mlp", 64, 256),
    "mlp512": StackSpec("mlp512", "mlp", 512, 128),
    "conv16": StackSpec("conv16", "conv", 16, 32, 16),
}


def _block(spec: StackSpec) -> nn.Module:
    if spec.kind == "mlp":
        return nn.Sequential(nn.Linear(spec.width, spec.width), nn.Tanh(), nn.Linear(spec.width, spec.width))
    if spec.kind == "conv":
        c = spec.width
        return nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
    raise ValueError(f"`kind` must be 'mlp' or 'conv'; got {spec.kind!r}.")


def build_functions(spec: StackSpec, depth: int, *, seed: int = 0, device="cpu") -> list[nn.Module]:
    """``depth`` untied residual functions with PyTorch's default initialisation, seeded by ``seed``.

    The global random state is forked and restored (library code never changes it).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        functions = [_block(spec) for _ in range(depth)]
    return [f.to(device) for f in functions]


def make_input(spec: StackSpec, *, seed: int = 1, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Standard normal input of shape ``spec.input_shape`` from a generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(spec.input_shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)


def converted(functions: list[nn.Module], dtype: torch.dtype) -> list[nn.Module]:
    """Deep copies of ``functions`` in ``dtype`` (the float64 reference, or bf16 runs)."""
    return [copy.deepcopy(f).to(dtype) for f in functions]


def parameters(functions: list[nn.Module]) -> list[nn.Parameter]:
    """Every parameter of the stack, in layer order (the order gradients are compared in)."""
    return [p for f in functions for p in f.parameters()]
