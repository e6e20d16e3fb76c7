"""Converting residual networks to Momentum ResNets (``ode_momentum.convert``)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import ode_momentum as om
from ode_momentum import models
from ode_momentum.analysis import saved_tensor_bytes
from ode_momentum.convert import (
    MomentumLayers,
    MomentumStage,
    momentum_stages,
    momentum_state_dict,
    plain_state_dict,
    to_momentum,
    transform_to_momentumnet,
    with_gamma,
)

# gamma = 0 gives back the original network: x + (B(x) - x) rounds to B(x) within an ulp of the state
# (measured: exactly 0 for the ResNets in float32, 5e-7 for a float32 Transformer encoder, 1e-15 in float64).
# The bound:
IDENTITY_TOL = 1e-6
# Exact mode vs backprop at the same (dyadic) gamma, ResNet-34 in float64: the forwards differ only by the
# exact mode's 2^-44 state resolution; measured 3.5e-13 (norm-wise, worst tensor). The bound, 1e-5.
# (In float32 the comparison measures float32 conditioning, not the method: for this input both float32 runs
# are 1.5e-3 away from the float64 gradient of BatchNorm biases, for another input 1.4e-6.)
EXACT_VS_BACKPROP_RTOL = 1e-5
# float64 gradients of a memory-free mode against backprop: float reversal drifts by ~u * gamma^-N
# (u = 1.1e-16, N <= 4 here); the exact mode differs only through its 2^-44 state resolution. Measured <= 1e-12.
FLOAT64_RTOL = 1e-9
# nested tensors are a prototype in torch 2.13 and torch's own encoder warns when it builds one
NESTED_WARNING = "ignore:The PyTorch API of nested tensors is in prototype stage:UserWarning"


def _seeded(build, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _with_bn_statistics(model, shape, dtype=torch.float32):
    """Run a few training batches so that BatchNorm running statistics are not the trivial 0 / 1."""
    gen = torch.Generator().manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(2 * torch.randn(*shape, generator=gen, dtype=dtype) + 1)
    return model.eval()


def _encoder(norm_first=False, n_layers=4, dtype=torch.float32, dropout=0.0):
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=dropout, batch_first=True, norm_first=norm_first)
    # enable_nested_tensor only where torch can use it (it warns for pre-norm layers otherwise)
    return _seeded(lambda: nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=not norm_first)).to(dtype)


def _padding_mask():
    pad = torch.zeros(3, 7, dtype=torch.bool)  # (batch, seq): True marks padding
    pad[0, 5:] = True
    pad[2, 3:] = True
    return pad


def _rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# ----------------------------------------------------------------------------------- gamma = 0 identity


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])  # BasicBlock and Bottleneck
def test_gamma_zero_reproduces_the_resnet(arch):
    plain = _seeded(lambda: models.resnet(arch, 10, stem="cifar", width=8))
    _with_bn_statistics(plain, (16, 3, 16, 16))
    converted = to_momentum(plain, gamma=0.0, gradient="backprop").eval()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(converted(x), plain(x), rtol=0, atol=IDENTITY_TOL)
    assert sum(p.numel() for p in converted.parameters()) == sum(p.numel() for p in plain.parameters())
    assert len(converted.state_dict()) == len(plain.state_dict())


@pytest.mark.filterwarnings(NESTED_WARNING)
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"src_key_padding_mask": "pad"},
        {"mask": "causal", "is_causal": True},
    ],
    ids=["plain", "padding", "causal"],
)
def test_gamma_zero_reproduces_the_transformer_encoder(norm_first, kwargs):
    encoder = _encoder(norm_first, dtype=torch.float64).eval()
    converted = to_momentum(encoder, "", gamma=0.0, gradient="backprop")
    pad = _padding_mask()
    values = {"pad": pad, "causal": nn.Transformer.generate_square_subsequent_mask(7, dtype=torch.float64)}
    kwargs = {k: values.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}
    x = torch.randn(3, 7, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    valid = ~pad[..., None] if "src_key_padding_mask" in kwargs else torch.ones((), dtype=torch.bool)
    for grad in (False, True):  # no grad: torch's fast (nested-tensor) path; grad: the standard path
        with torch.set_grad_enabled(grad):
            a, b = converted(x, **kwargs).detach(), encoder(x, **kwargs).detach()
        assert float(((a - b).abs() * valid).max()) <= IDENTITY_TOL
    assert sum(p.numel() for p in converted.parameters()) == sum(p.numel() for p in encoder.parameters())


@pytest.mark.filterwarnings(NESTED_WARNING)
def test_converted_encoder_keeps_torch_fast_path_reads_working():
    encoder = _encoder().eval()
    converted = to_momentum(encoder, "")
    layers = converted.layers
    assert isinstance(layers, MomentumLayers)
    assert isinstance(converted, nn.TransformerEncoder)
    assert layers[0] is layers.blocks()[0] and len(layers) == 4
    assert layers[0].self_attn.batch_first  # what TransformerEncoder.forward reads
    assert list(layers) == [layers]  # iterating yields the one callable that runs the whole stage
    x = torch.randn(3, 7, 16)
    with torch.no_grad():  # eval + padding mask + no grad: torch hands the layers a nested tensor
        y = converted(x, src_key_padding_mask=_padding_mask())
    assert y.shape == x.shape and not y.is_nested
    assert bool((y[_padding_mask()] == 0).all())  # torch pads the nested result with zeros, as originally


def test_extra_arguments_reach_every_block_of_a_module_list_stage():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.seen = []

        def forward(self, x, scale, *, shift=0.0):
            self.seen.append((scale, shift))
            return x + scale * torch.tanh(self.lin(x)) + shift

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(Block() for _ in range(4))

        def forward(self, x):
            for block in self.blocks:
                x = block(x, 0.5, shift=0.1)
            return x

    model = _seeded(Model)
    converted = to_momentum(model, "blocks", gamma=0.0, gradient="backprop", keep_first_block=False)
    x = torch.randn(2, 4)
    torch.testing.assert_close(converted(x), model(x), rtol=0, atol=IDENTITY_TOL)
    assert all(block.seen == [(0.5, 0.1)] for block in converted.blocks.blocks())


# ------------------------------------------------------------------------------------ state-dict keys


def test_plain_state_dict_loads_into_the_converted_model():
    plain = _seeded(lambda: models.resnet18(10, stem="cifar", width=4), seed=0)
    other = _seeded(lambda: models.resnet18(10, stem="cifar", width=4), seed=1)
    converted = to_momentum(other, gamma=0.9)
    assert "layer1.1.functions.0.conv1.weight" in converted.state_dict()
    result = converted.load_state_dict(plain.state_dict())  # plain keys, renamed as they load
    assert not result.missing_keys and not result.unexpected_keys
    for (name, p), q in zip(plain_state_dict(converted).items(), plain.state_dict().values()):
        assert torch.equal(p, q), name
    # the explicit renaming agrees, and a converted state dict loads as well
    renamed = momentum_state_dict(converted, plain.state_dict())
    assert set(renamed) == set(converted.state_dict())
    converted.load_state_dict(converted.state_dict())


def test_keys_without_a_kept_first_block():
    model = nn.Sequential(nn.Linear(3, 4), nn.Sequential(*(nn.Linear(4, 4) for _ in range(3))))
    converted = to_momentum(model, "1", keep_first_block=False, gradient="backprop")
    assert set(converted.state_dict()) == {
        "0.weight", "0.bias", *(f"1.0.functions.{i}.{p}" for i in range(3) for p in ("weight", "bias"))
    }
    assert set(plain_state_dict(converted)) == set(model.state_dict())
    fresh = to_momentum(_seeded(lambda: copy.deepcopy(model), 5), "1", keep_first_block=False, gradient="backprop")
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(2, 3)
    torch.testing.assert_close(fresh(x), converted(x), rtol=0, atol=0)


def test_encoder_keys_and_plain_encoder_checkpoint():
    encoder = _encoder(n_layers=3)
    converted = to_momentum(_encoder(n_layers=3), "", gamma=0.5)
    assert "layers.1.functions.1.linear1.weight" in converted.state_dict()
    converted.load_state_dict(encoder.state_dict())
    assert torch.equal(converted.layers[2].linear1.weight, encoder.layers[2].linear1.weight)


def test_strict_loading_still_reports_wrong_keys():
    converted = to_momentum(_seeded(lambda: models.resnet18(10, stem="cifar", width=4)))
    state = converted.state_dict()
    state["layer1.7.conv1.weight"] = state.pop("layer1.1.functions.0.conv1.weight")
    with pytest.raises(RuntimeError, match="layer1.7.conv1.weight"):
        converted.load_state_dict(state)


# ---------------------------------------------------------------------------- exact vs backprop, memory


def _stage_input(model, stage_name, x):
    """The input of the momentum stack of ``stage_name`` (after the stem, earlier stages, the kept block)."""
    with torch.no_grad():
        h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        for name in models.STAGES:
            stage = getattr(model, name)
            if name == stage_name:
                return stage[0](h)
            h = stage(h)


@pytest.mark.slow
def test_resnet34_exact_step_matches_backprop_and_memory_is_flat_in_depth():
    plain = _seeded(lambda: models.resnet34(10, stem="cifar")).double()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 32, 32, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (8,), generator=gen)
    exact = to_momentum(plain, gamma=0.9, gradient="exact")
    gamma = momentum_stages(exact)[0][1].effective_gamma
    assert gamma != 0.9 and abs(gamma - 0.9) < 2**-31
    backprop = to_momentum(plain, gamma=gamma, gradient="backprop")
    for model in (exact, backprop):
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    for (name, a), b in zip(exact.named_parameters(), backprop.parameters()):
        assert _rel(a.grad, b.grad) <= EXACT_VS_BACKPROP_RTOL, name
        assert _rel(a, b) <= EXACT_VS_BACKPROP_RTOL, name
    for (name, a), b in zip(exact.named_buffers(), backprop.buffers()):  # BatchNorm statistics, moved once
        if a.is_floating_point():
            assert _rel(a, b) <= EXACT_VS_BACKPROP_RTOL, name
        else:
            assert torch.equal(a, b), name  # num_batches_tracked == 1 in both

    # saved activations of each momentum stage do not depend on its depth (here 2x the ResNet-34 depth), apart
    # from the bit buffer's word: one integer per element, int8 up to 7 layers; 11 layers at gamma 0.9 store
    # about 2 bits per element, int8 or at most int16 (1 byte more)
    deeper = _seeded(lambda: models.ResNet(models.BasicBlock, (5, 7, 11, 5), 10, stem="cifar")).double()
    deeper = to_momentum(deeper, gamma=0.9, gradient="exact").train()
    for (path, stack), (_, deep_stack) in zip(momentum_stages(exact), momentum_stages(deeper)):
        assert deep_stack.depth == 2 * stack.depth
        h = _stage_input(exact, path.split(".")[0], x).requires_grad_()
        shallow_bytes, deep_bytes = saved_tensor_bytes(stack, h), saved_tensor_bytes(deep_stack, h)
        assert shallow_bytes == h.numel() * (2 * 8 + 1), path  # X_N, V_N int64 and an int8 word
        assert deep_bytes - shallow_bytes in (0, h.numel()), path


@pytest.mark.parametrize("gradient", sorted(om.GRADIENTS))
def test_frozen_blocks_in_every_gradient_mode(gradient):
    plain = _seeded(lambda: models.ResNet(models.BasicBlock, (2, 3, 3, 1), 5, stem="cifar", width=4)).double()
    frozen = ["layer1.0", "layer2.2", "layer3.1", "layer3.2", "fc"]  # a kept block, stacked blocks, a stack's all
    model = to_momentum(plain, ("layer1", "layer2", "layer3"), gamma=0.8, gradient=gradient)
    # the damping applied: exact quantises gamma; "auto" picks float reversal at this depth and dtype and
    # applies 0.8 itself (although MomentumResNet.effective_gamma reports the quantised value for "auto")
    gamma = momentum_stages(model)[0][1].effective_gamma if gradient == "exact" else 0.8
    reference = to_momentum(plain, ("layer1", "layer2", "layer3"), gamma=gamma, gradient="backprop")
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for m in (model, reference):
        blocks = {f"{name}.{i}": b for name in models.STAGES for i, b in enumerate(_blocks(getattr(m, name)))}
        blocks["fc"] = m.fc
        for name in frozen:
            blocks[name].requires_grad_(False)
        m.train()
        m(x).square().mean().backward()
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        if not a.requires_grad:
            assert a.grad is None and b.grad is None, name
        else:
            assert _rel(a.grad, b.grad) <= FLOAT64_RTOL, name


def _blocks(stage):
    return stage.blocks() if isinstance(stage, (MomentumStage, MomentumLayers)) else list(stage)


@pytest.mark.parametrize("train", [True, False], ids=["train-dropout", "eval"])
def test_transformer_with_padding_mask_same_outputs_and_gradients_in_backprop_and_exact(train):
    encoder = _encoder(n_layers=5, dtype=torch.float64, dropout=0.1)
    exact = to_momentum(encoder, "", gamma=0.9, gradient="exact")
    backprop = to_momentum(encoder, "", gamma=exact.layers.momentum.effective_gamma, gradient="backprop")
    pad = _padding_mask()
    x = torch.randn(3, 7, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    results = []
    for model in (exact, backprop):
        model.train(train)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(7)  # the same dropout masks in both forwards
            y = model(x, src_key_padding_mask=pad)
            y.masked_fill(pad[..., None], 0.0).square().sum().backward()
        results.append((y.detach(), [p.grad for p in model.parameters()]))
    (y_exact, g_exact), (y_backprop, g_backprop) = results
    valid = ~pad[..., None]
    assert _rel(y_exact * valid, y_backprop * valid) <= FLOAT64_RTOL
    for a, b in zip(g_exact, g_backprop):
        assert _rel(a, b) <= FLOAT64_RTOL


def test_exact_encoder_in_eval_mode_with_gradients_regression():
    """Regression: in eval mode the memory-free forward (under no_grad) took torch's fused attention path
    and the backward's recomputation the standard one, so the exact mode's checksum failed at layer 4."""
    encoder = _encoder(n_layers=6).eval()
    converted = to_momentum(encoder, "", gamma=0.9, gradient="exact")
    x = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(0))
    converted(x, src_key_padding_mask=_padding_mask()).sum().backward()  # raised ExactReversalError
    assert torch.backends.mha.get_fastpath_enabled()  # the switch is restored


# ------------------------------------------------------------------------------- the other entry points


def test_model_is_not_modified_and_stages_are_replaced():
    plain = models.resnet18(10, stem="cifar", width=4)
    converted = to_momentum(plain, ("layer2", "layer4"), gamma=0.5, gradient="reversible")
    assert type(plain.layer2) is nn.Sequential
    assert isinstance(converted.layer2, MomentumStage) and type(converted.layer1) is nn.Sequential
    stack = converted.layer2.momentum
    assert (stack.gamma, stack.gradient, stack.residual, stack.depth) == (0.5, "reversible", False, 1)
    assert converted.layer2[0] is not plain.layer2[0]  # a deep copy


def test_dotted_paths_and_the_root():
    outer = nn.Sequential(nn.Linear(2, 4), nn.Sequential(nn.Sequential(*(nn.Linear(4, 4) for _ in range(3)))))
    converted = to_momentum(outer, "1.0", gradient="backprop")
    assert isinstance(converted[1][0], MomentumStage)
    root = to_momentum(outer[1][0], "", gradient="backprop", gamma=0.0)
    x = torch.randn(2, 4)
    torch.testing.assert_close(root(x), outer[1][0](x), rtol=0, atol=IDENTITY_TOL)


def test_transform_to_momentumnet_keeps_the_reference_keywords():
    plain = models.resnet18(10, stem="cifar", width=4)
    converted = transform_to_momentumnet(plain, sub_layers=["layer3"], keep_first_layer=True, gamma=0.8)
    assert [(p, s.gamma, s.gradient, s.residual) for p, s in momentum_stages(converted)] == [
        ("layer3.1", 0.8, "exact", False)
    ]
    backprop = transform_to_momentumnet(plain, use_backprop=True, is_residual=True, gamma=0.0)
    assert {s.gradient for _, s in momentum_stages(backprop)} == {"backprop"}
    assert all(s.residual for _, s in momentum_stages(backprop))
    with pytest.raises(ValueError, match="use_backprop=True"):
        transform_to_momentumnet(plain, gamma=0.0)


def test_with_gamma_keeps_weights_and_changes_gamma():
    converted = to_momentum(_seeded(lambda: models.resnet18(10, stem="cifar", width=4)), gamma=0.9)
    changed = with_gamma(converted, 0.5)
    assert [s.gamma for _, s in momentum_stages(changed)] == [0.5] * 4
    assert [s.gradient for _, s in momentum_stages(changed)] == ["exact"] * 4
    for a, b in zip(changed.state_dict().values(), converted.state_dict().values()):
        assert torch.equal(a, b)
    zero = with_gamma(converted, 0.0, gradient="backprop")
    assert [s.gamma for _, s in momentum_stages(zero)] == [0.0] * 4
    with pytest.raises(ValueError, match="cannot be reversed"):
        with_gamma(converted, 0.0)
    with pytest.raises(ValueError, match="holds no MomentumResNet"):
        with_gamma(nn.Linear(2, 2), 0.5)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda m: to_momentum(m, gamma=0.0), ValueError, r'`gamma` = 0 cannot be reversed.*gradient="backprop"'),
        (lambda m: to_momentum(m, gamma=1.5), ValueError, r"`gamma` must lie in \[0, 1\]; got 1.5"),
        (lambda m: to_momentum(m, gradient="adjoint"), ValueError, r"`gradient` must be one of"),
        (lambda m: to_momentum(m, gradient_options={"every": 2}), TypeError, r"unknown option\(s\) \['every'\]"),
        (lambda m: to_momentum(m, ("layer5",)), ValueError, r"'layer5' is not a submodule.*'layer4'"),
        (lambda m: to_momentum(m, ()), ValueError, r"`stages` is empty"),
        (lambda m: to_momentum(m, ("layer1", "layer1")), ValueError, r"repeats a path"),
        (lambda m: to_momentum(m, ("layer1", "layer1.0")), ValueError, r"'layer1.0' lies inside 'layer1'"),
        (lambda m: to_momentum(m, ("fc",)), TypeError, r"stage 'fc' is a Linear"),
        (lambda m: to_momentum(m, (3,)), TypeError, r"`stages` entries must be dotted paths"),
        (lambda m: to_momentum(m, keep_first_block=False), ValueError,
         r"block 0 of stage 'layer2' has a `downsample`.*keep_first_block=True"),
        (lambda m: to_momentum(m, keep_first_block=1), TypeError, r"`keep_first_block` must be True or False"),
        (lambda m: to_momentum(to_momentum(m), ("layer1",)), ValueError, r"'layer1' is already converted"),
        (lambda m: to_momentum("resnet"), TypeError, r"`model` must be an nn.Module; got str"),
        (lambda m: to_momentum(models.ResNet(models.BasicBlock, (1, 1, 1, 1))), ValueError,
         r"stage 'layer1' has 1 block\(s\); with keep_first_block=True at least 2"),
    ],
)
def test_conversion_errors(call, error, match):
    model = models.resnet18(10, stem="cifar", width=4)
    with pytest.raises(error, match=match):
        call(model)


def test_torchvision_resnets_convert():
    tv = pytest.importorskip("torchvision")
    for build in (tv.models.resnet18, tv.models.resnet50):
        plain = _seeded(lambda: build(num_classes=10))
        _with_bn_statistics(plain, (2, 3, 64, 64))
        converted = to_momentum(plain, gamma=0.0, gradient="backprop")
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            torch.testing.assert_close(converted(x), plain(x), rtol=0, atol=IDENTITY_TOL)
        ours = models.resnet18(10) if build is tv.models.resnet18 else models.resnet50(10)
        ours.load_state_dict(plain.state_dict())  # same module names, same keys
        momentum = models.resnet18(10, momentum=True) if build is tv.models.resnet18 else models.resnet50(10, momentum=True)
        momentum.load_state_dict(plain.state_dict())
