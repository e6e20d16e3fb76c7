"""ResNet-18/34/50/101/152 with CIFAR or ImageNet stems, plain or Momentum, laid out like torchvision's.

The module names are torchvision's (``conv1``, ``bn1``, ``layer1`` .. ``layer4`` of :class:`BasicBlock` or
:class:`Bottleneck` with ``conv1/bn1/conv2/bn2(/conv3/bn3)/downsample``, ``fc``), so a state dict of a
torchvision ResNet loads into the plain model of the same stem, and a plain checkpoint loads into the
momentum model (see :mod:`ode_momentum.convert` for how the keys of the converted stages change).

The momentum model is the plain one passed through :func:`ode_momentum.to_momentum`: the first block of each
stage (which changes the shape) stays a ResNet block, the other blocks ``B_n`` form one
:class:`~ode_momentum.MomentumResNet` with residual functions ``f_n(x) = B_n(x) - x``::

    v_{n+1} = gamma v_n + (1 - gamma) f_n(x_n),    x_{n+1} = x_n + v_{n+1},    v_0 = 0.

With ``gamma = 0`` this is the plain ResNet.

References
----------
He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (the architectures; the
CIFAR stem of section 4.2); torchvision's ``resnet.py`` (ResNet v1.5: the stride of a Bottleneck sits on its
3x3 convolution); Sander, Ablin, Blondel, Peyré, "Momentum Residual Neural Networks", ICML 2021, section 5.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._checks import check_choice, check_positive_int

STEMS = ("imagenet", "cifar")

# name -> (block class name, blocks per stage)
_LAYOUTS = {
    "resnet18": ("BasicBlock", (2, 2, 2, 2)),
    "resnet34": ("BasicBlock", (3, 4, 6, 3)),
    "resnet50": ("Bottleneck", (3, 4, 6, 3)),
    "resnet101": ("Bottleneck", (3, 4, 23, 3)),
    "resnet152": ("Bottleneck", (3, 8, 36, 3)),
}
ARCHS = tuple(_LAYOUTS)
STAGES = ("layer1", "layer2", "layer3", "layer4")


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """``relu(x' + bn2(conv2(relu(bn1(conv1(x))))))`` with ``x' = downsample(x)`` or ``x``: two 3x3 convolutions.

    Maps ``(batch, inplanes, H, W)`` to ``(batch, planes, H / stride, W / stride)``. ``expansion = 1``.
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))  # (B, planes, H', W')
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """``relu(x' + bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))))``: 1x1 reduce, 3x3 (strided), 1x1 expand.

    Maps ``(batch, inplanes, H, W)`` to ``(batch, 4 planes, H / stride, W / stride)``. ``expansion = 4``;
    the stride sits on the 3x3 convolution (ResNet v1.5, as in torchvision).
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))  # (B, planes, H, W)
        out = self.relu(self.bn2(self.conv2(out)))  # (B, planes, H', W')
        out = self.bn3(self.conv3(out))  # (B, 4 planes, H', W')
        return self.relu(out + identity)


_BLOCKS = {"BasicBlock": BasicBlock, "Bottleneck": Bottleneck}


class ResNet(nn.Module):
    """A ResNet with torchvision's module names: ``conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc``.

    Parameters
    ----------
    block : type
        :class:`BasicBlock` or :class:`Bottleneck` (or any class with that constructor and ``expansion``).
    layers : sequence of 4 ints
        Blocks per stage, each ``>= 1`` (``(2, 2, 2, 2)`` is ResNet-18).
    num_classes : int
        Outputs of ``fc`` (logits).
    stem : {"imagenet", "cifar"}
        ``"imagenet"``: 7x7 stride-2 convolution and 3x3 stride-2 max-pool (inputs of about 224x224).
        ``"cifar"``: one 3x3 stride-1 convolution and no pooling (``maxpool`` is ``nn.Identity``), for
        32x32 inputs (He et al. 2016, section 4.2; the stem of the paper's CIFAR experiments).
    in_channels : int
        Input channels (3 for RGB, 1 for the digits).
    width : int
        Channels of ``layer1``; stage ``s`` has ``width * 2^s * expansion`` output channels (64 is
        torchvision's).
    zero_init_residual : bool
        Start the last BatchNorm of every block at weight 0, so each block starts as its skip connection.

    Input ``(batch, in_channels, H, W)`` float; output logits ``(batch, num_classes)``. Weights are
    initialised as torchvision does (Kaiming normal, fan-out, for the convolutions) from the global
    generator: seed it inside ``torch.random.fork_rng`` for reproducible weights.

    Raises
    ------
    TypeError, ValueError
        For a non-positive size, a ``layers`` that is not 4 positive ints, or an unknown ``stem``.
    """

    def __init__(
        self,
        block: type,
        layers: Sequence[int],
        num_classes: int = 1000,
        *,
        stem: str = "imagenet",
        in_channels: int = 3,
        width: int = 64,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        if not isinstance(block, type) or not hasattr(block, "expansion"):
            raise TypeError(f"`block` must be a block class with an `expansion` (BasicBlock, Bottleneck); got {block!r}.")
        layers = tuple(layers)
        if len(layers) != 4:
            raise ValueError(f"`layers` must give the blocks of 4 stages, e.g. (2, 2, 2, 2); got {layers!r}.")
        for i, n in enumerate(layers):
            check_positive_int(f"layers[{i}]", n)
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        check_positive_int("width", width)
        check_choice("stem", stem, STEMS)
        self.stem = stem
        self.inplanes = width
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = _conv3x3(in_channels, width)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block: type, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers.extend(block(self.inplanes, planes) for _ in range(1, blocks))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, num_classes)`` for images ``x`` of shape ``(batch, in_channels, H, W)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, width, H', W')
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 8 width expansion, H'/8, W'/8)
        x = torch.flatten(self.avgpool(x), 1)  # (B, 8 width expansion)
        return self.fc(x)


def resnet(
    arch: str,
    num_classes: int = 1000,
    *,
    stem: str = "imagenet",
    in_channels: int = 3,
    width: int = 64,
    zero_init_residual: bool = False,
    momentum: bool = False,
    gamma: float = 0.9,
    gradient: str = "exact",
    gradient_options: dict | None = None,
) -> ResNet:
    """Build the ResNet ``arch`` (one of :data:`ARCHS`), plain or Momentum.

    Parameters
    ----------
    arch : {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"}
        Blocks per stage (2,2,2,2), (3,4,6,3) of :class:`BasicBlock`; (3,4,6,3), (3,4,23,3), (3,8,36,3) of
        :class:`Bottleneck`.
    num_classes, stem, in_channels, width, zero_init_residual
        See :class:`ResNet`.
    momentum : bool
        ``True``: every stage becomes its first block followed by one :class:`~ode_momentum.MomentumResNet`
        over the others, as :func:`ode_momentum.to_momentum` converts it (same parameters, same state-dict
        keys as a converted plain model).
    gamma : float in [0, 1]
        Momentum coefficient of the momentum stages (the paper uses 0.9). ``0`` needs ``gradient="backprop"``.
    gradient : str
        Gradient mode of the momentum stages (``ode_momentum.GRADIENTS``; default ``"exact"``: activation
        memory independent of the stage depth, exact gradients).
    gradient_options : dict, optional
        Options of that mode.

    Returns
    -------
    ResNet
        Maps ``(batch, in_channels, H, W)`` float to logits ``(batch, num_classes)``.

    Raises
    ------
    TypeError, ValueError
        For an unknown ``arch``, a bad size (see :class:`ResNet`), or a bad momentum setting (see
        :func:`ode_momentum.to_momentum`).

    References
    ----------
    He et al., CVPR 2016; Sander et al., ICML 2021, section 5 (first block of each stage kept).
    """
    check_choice("arch", arch, ARCHS)
    if not isinstance(momentum, bool):
        raise TypeError(f"`momentum` must be True or False; got {momentum!r} ({type(momentum).__name__}).")
    block, layers = _LAYOUTS[arch]
    if momentum:
        from .convert import _check_settings  # a cycle: convert imports nothing from here

        _check_settings(gamma, gradient, gradient_options, keep_first_block=True, residual=False)
    model = ResNet(
        _BLOCKS[block],
        layers,
        num_classes,
        stem=stem,
        in_channels=in_channels,
        width=width,
        zero_init_residual=zero_init_residual,
    )
    if momentum:
        from .convert import convert_in_place

        model = convert_in_place(
            model, STAGES, gamma=gamma, keep_first_block=True, gradient=gradient, residual=False,
            gradient_options=gradient_options,
        )
    return model


def _builder(arch: str):
    def build(num_classes: int = 1000, **kwargs) -> ResNet:
        return resnet(arch, num_classes, **kwargs)

    block, layers = _LAYOUTS[arch]
    build.__name__ = build.__qualname__ = arch
    build.__doc__ = (
        f"{arch.replace('resnet', 'ResNet-')}: {block} blocks {layers} per stage, plain or Momentum.\n\n"
        f"Same as ``resnet({arch!r}, num_classes, **kwargs)``; see :func:`resnet` for the keyword arguments\n"
        "(``stem``, ``in_channels``, ``width``, ``zero_init_residual``, ``momentum``, ``gamma``, ``gradient``,\n"
        "``gradient_options``).\n"
    )
    return build


resnet18 = _builder("resnet18")
resnet34 = _builder("resnet34")
resnet50 = _builder("resnet50")
resnet101 = _builder("resnet101")
resnet152 = _builder("resnet152")

__all__ = [
    "ARCHS",
    "STEMS",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "resnet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
]
