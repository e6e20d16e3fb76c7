"""ResNet builders (``ode_momentum.models``): torchvision's layout, CIFAR and ImageNet stems, momentum models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ode_momentum import models
from ode_momentum.convert import MomentumStage, momentum_stages, to_momentum
from ode_momentum.nn import MomentumResNet

# torchvision's parameter counts (ImageNet stem, 1000 classes), from its model documentation
TORCHVISION_PARAMETERS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}
BLOCKS_PER_STAGE = {
    "resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3), "resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3),
    "resnet152": (3, 8, 36, 3),
}
# gamma = 0 momentum model against the plain one (see tests/test_convert.py): x + (B(x) - x) within an ulp
IDENTITY_TOL = 1e-6


def _seeded(build, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


@pytest.mark.parametrize("arch", models.ARCHS)
def test_layout_matches_torchvision(arch):
    with torch.device("meta"):  # no memory, no time: only the structure is checked
        model = getattr(models, arch)()
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMETERS[arch]
    block = models.BasicBlock if arch in ("resnet18", "resnet34") else models.Bottleneck
    for name, n in zip(models.STAGES, BLOCKS_PER_STAGE[arch]):
        stage = getattr(model, name)
        assert type(stage) is nn.Sequential and len(stage) == n
        assert all(type(b) is block for b in stage)
    keys = set(model.state_dict())
    assert {"conv1.weight", "bn1.running_var", "layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_mean",
            "layer4.1.bn2.num_batches_tracked", "fc.weight", "fc.bias"} <= keys
    if block is models.Bottleneck:
        assert {"layer1.0.conv3.weight", "layer1.0.bn3.bias", "layer1.0.downsample.0.weight"} <= keys
    else:
        assert "layer1.0.downsample.0.weight" not in keys


@pytest.mark.parametrize(("stem", "size", "pooled"), [("imagenet", 64, 2), ("cifar", 32, 4)])
def test_stems(stem, size, pooled):
    model = _seeded(lambda: models.resnet18(7, stem=stem, width=4, in_channels=1))
    assert model.conv1.kernel_size == ((7, 7) if stem == "imagenet" else (3, 3))
    assert isinstance(model.maxpool, nn.MaxPool2d if stem == "imagenet" else nn.Identity)
    x = torch.randn(2, 1, size, size)
    features = model.layer4(model.layer3(model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x))))))))
    assert features.shape == (2, 32, pooled, pooled)  # imagenet: /32 (stride-2 stem, max-pool, 3 stages); cifar: /8
    assert model(x).shape == (2, 7)


def test_zero_init_residual_starts_each_block_at_its_skip():
    model = models.resnet50(5, stem="cifar", width=4, zero_init_residual=True)
    assert all(not b.bn3.weight.detach().any() for stage in models.STAGES for b in getattr(model, stage))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_momentum_model_is_the_converted_plain_model(arch):
    plain = _seeded(lambda: models.resnet(arch, 10, stem="cifar", width=4))
    momentum = _seeded(lambda: models.resnet(arch, 10, stem="cifar", width=4, momentum=True, gamma=0.0,
                                            gradient="backprop"))
    converted = to_momentum(plain, gamma=0.0, gradient="backprop")
    assert list(momentum.state_dict()) == list(converted.state_dict())
    for a, b in zip(momentum.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(a, b)  # same initialisation, the blocks only moved
    assert all(isinstance(getattr(momentum, s), MomentumStage) for s in models.STAGES)
    depths = [stack.depth for _, stack in momentum_stages(momentum)]
    assert depths == [n - 1 for n in BLOCKS_PER_STAGE[arch]]  # the first block of each stage is kept
    momentum.eval()
    plain.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(momentum(x), plain(x), rtol=0, atol=IDENTITY_TOL)


def test_momentum_model_loads_a_plain_checkpoint_and_trains_memory_free():
    plain = _seeded(lambda: models.resnet18(10, stem="cifar", width=4), seed=1)
    momentum = models.resnet18(10, stem="cifar", width=4, momentum=True, gamma=0.9)
    momentum.load_state_dict(plain.state_dict())
    stacks = [m for m in momentum.modules() if isinstance(m, MomentumResNet)]
    assert [(s.gamma, s.gradient, s.residual) for s in stacks] == [(0.9, "exact", False)] * 4
    momentum(torch.randn(4, 3, 16, 16)).sum().backward()
    assert all(p.grad is not None for p in momentum.parameters())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"arch": "resnet19"}, ValueError, r"`arch` must be one of \['resnet18'"),
        ({"stem": "tiny"}, ValueError, r"`stem` must be one of \['imagenet', 'cifar'\]"),
        ({"width": 0}, ValueError, r"`width` must be >= 1"),
        ({"num_classes": 2.0}, TypeError, r"`num_classes` must be a positive int"),
        ({"momentum": 1}, TypeError, r"`momentum` must be True or False"),
        ({"momentum": True, "gamma": 0.0}, ValueError, r"`gamma` = 0 cannot be reversed"),
        ({"momentum": True, "gradient": "fast"}, ValueError, r"`gradient` must be one of"),
    ],
)
def test_builder_errors(kwargs, error, match):
    kwargs = {"arch": "resnet18", "num_classes": 10, **kwargs}
    with pytest.raises(error, match=match):
        models.resnet(kwargs.pop("arch"), kwargs.pop("num_classes"), **kwargs)


def test_resnet_class_errors():
    with pytest.raises(ValueError, match=r"`layers` must give the blocks of 4 stages"):
        models.ResNet(models.BasicBlock, (2, 2, 2))
    with pytest.raises(ValueError, match=r"`layers\[1\]` must be >= 1"):
        models.ResNet(models.BasicBlock, (2, 0, 2, 2))
    with pytest.raises(TypeError, match=r"`block` must be a block class"):
        models.ResNet(nn.Linear, (2, 2, 2, 2))


def test_torchvision_checkpoints_load_and_agree():
    tv = pytest.importorskip("torchvision")
    for arch in ("resnet18", "resnet50"):
        reference = _seeded(lambda: getattr(tv.models, arch)(num_classes=10)).eval()
        ours = getattr(models, arch)(10).eval()
        ours.load_state_dict(reference.state_dict())
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=IDENTITY_TOL)
