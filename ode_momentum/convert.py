"""Convert residual networks into Momentum ResNets, reusing their weights.

:func:`to_momentum` turns each named *stage* of a model (an ``nn.Sequential`` of residual blocks such as a
ResNet's ``layer1``, an ``nn.ModuleList`` of blocks, or an ``nn.TransformerEncoder``) into its first block
(kept as it is, because it usually changes the shape) followed by one :class:`~ode_momentum.MomentumResNet`
over the remaining blocks ``B_n``. A block already adds its skip connection, so the residual function of
layer ``n`` is ``f_n(x) = B_n(x) - x`` (``residual=False``) and the stage computes::

    v_{n+1} = gamma v_n + (1 - gamma) (B_n(x_n) - x_n),    x_{n+1} = x_n + v_{n+1},    v_0 = 0,

which is the original stage for ``gamma = 0``. The blocks themselves (and so the parameters, buffers and
their count) are reused unchanged; only the module paths change.

State-dict keys
---------------
For a stage at path ``P`` (``P = "<encoder>.layers"`` for a Transformer encoder), block ``i`` moves:

=====================  ============================  ==============================
plain key              ``keep_first_block=True``     ``keep_first_block=False``
=====================  ============================  ==============================
``P.0.<rest>``         ``P.0.<rest>``                ``P.0.functions.0.<rest>``
``P.i.<rest>``, i > 0  ``P.1.functions.<i-1>.<rest>``  ``P.0.functions.<i>.<rest>``
=====================  ============================  ==============================

Every other key is unchanged. A converted model's ``load_state_dict`` accepts either layout (the converted
stages rename plain keys as they load, the way BatchNorm migrates old checkpoints), so a pretrained plain
state dict loads as it is; :func:`momentum_state_dict` and :func:`plain_state_dict` convert explicitly, for
example to export a fine-tuned model back to the plain layout.

References
----------
Sander, Ablin, Blondel, Peyré, "Momentum Residual Neural Networks", ICML 2021, section 5 (converting a
pretrained ResNet, first block of each stage kept); the ``momentumnet`` package's
``transform_to_momentumnet`` (the keyword names of :func:`transform_to_momentumnet`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ._checks import check_choice, check_gamma
from .gradients import GRADIENTS, resolve_gradient
from .nn import MomentumResNet

DEFAULT_STAGES = ("layer1", "layer2", "layer3", "layer4")


class MomentumStage(nn.Sequential):
    """A converted sequential stage: ``[first block,] MomentumResNet(remaining blocks)``.

    An ``nn.Sequential`` (so it runs like the stage it replaces); it also loads plain state-dict keys
    (see the module docstring). Built by :func:`to_momentum`.
    """

    def __init__(self, first: nn.Module | None, momentum: MomentumResNet):
        super().__init__(*([first] if first is not None else []), momentum)

    @property
    def momentum(self) -> MomentumResNet:
        """The momentum stack over the blocks after the kept one."""
        return self[-1]

    @property
    def keep_first_block(self) -> bool:
        return len(self) == 2

    def blocks(self) -> list[nn.Module]:
        """The original blocks, in order."""
        return ([self[0]] if self.keep_first_block else []) + list(self.momentum.functions)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        _rename_plain_keys(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class MomentumLayers(nn.Module):
    """A converted ``nn.ModuleList`` of blocks (a Transformer encoder's ``layers``): one callable stage.

    ``forward(x, *args, **kwargs)`` runs the kept first block, then the momentum stack over the others;
    the extra arguments (``src_mask``, ``src_key_padding_mask``, ``is_causal``, ...) reach every block.
    Iterating yields this module once, so a loop ``for layer in layers: x = layer(x, **kw)`` (as in
    ``nn.TransformerEncoder.forward``) runs the whole stage; indexing and ``len`` see the original blocks,
    so reads such as ``layers[0].self_attn.batch_first`` (the encoder's fast-path checks) keep working.

    The encoder's nested-tensor path (eval mode, no gradients, a padding mask) hands over a nested tensor;
    the momentum stack runs on its padded form with the padding mask rebuilt from the sequence lengths and
    returns a nested tensor again. A memory-free forward evaluates every block as its backward will (autograd
    on, an input that requires grad), so PyTorch's fused attention fast path, taken only without gradients,
    is never used there and the recomputation sees the forward's arithmetic.
    """

    def __init__(self, first: nn.Module | None, momentum: MomentumResNet):
        super().__init__()
        for i, module in enumerate(([first] if first is not None else []) + [momentum]):
            self.add_module(str(i), module)

    @property
    def momentum(self) -> MomentumResNet:
        return self._modules[str(len(self._modules) - 1)]

    @property
    def keep_first_block(self) -> bool:
        return len(self._modules) == 2

    def blocks(self) -> list[nn.Module]:
        """The original blocks, in order."""
        return ([self._modules["0"]] if self.keep_first_block else []) + list(self.momentum.functions)

    def __iter__(self):
        yield self

    def __len__(self) -> int:
        return len(self.blocks())

    def __getitem__(self, index: int) -> nn.Module:
        return self.blocks()[index]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Run the stage on ``x`` (``(batch, seq, features)`` or ``(seq, batch, features)``, or nested)."""
        if self.keep_first_block:
            x = self._modules["0"](x, *args, **kwargs)
        lengths = None
        if x.is_nested:  # the encoder's sparsity fast path: padded form + rebuilt padding mask
            lengths = [int(t.shape[0]) for t in x.unbind()]
            x = torch.nested.to_padded_tensor(x, 0.0)  # (batch, max length, features)
            positions = torch.arange(x.shape[1], device=x.device)
            kwargs = {**kwargs, "src_key_padding_mask": positions >= torch.tensor(lengths, device=x.device)[:, None]}
        x = self.momentum(x, *args, **kwargs)
        if lengths is not None:
            x = torch.nested.as_nested_tensor([x[i, :n] for i, n in enumerate(lengths)])
        return x

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        _rename_plain_keys(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


_STAGE_TYPES = (MomentumStage, MomentumLayers)


def to_momentum(
    model: nn.Module,
    stages: str | Iterable[str] = DEFAULT_STAGES,
    *,
    gamma: float = 0.9,
    keep_first_block: bool = True,
    gradient: str = "exact",
    residual: bool = False,
    gradient_options: dict | None = None,
) -> nn.Module:
    """Return a deep copy of ``model`` whose residual stages are Momentum ResNets over the same blocks.

    Each stage at a dotted path in ``stages`` becomes its first block (with ``keep_first_block``) followed by
    one :class:`~ode_momentum.MomentumResNet` over the remaining blocks ``B_n``, with
    ``v_{n+1} = gamma v_n + (1 - gamma) f_n(x_n)``, ``x_{n+1} = x_n + v_{n+1}``, ``v_0 = 0`` and
    ``f_n(x) = B_n(x) - x`` (``residual=False``) or ``f_n = B_n`` (``residual=True``). The blocks and their
    weights are reused; ``model`` is not modified. See the module docstring for the state-dict keys.

    Parameters
    ----------
    model : nn.Module
        A torchvision-style ResNet (``layer1`` .. ``layer4`` of ``BasicBlock`` / ``Bottleneck``), an
        ``nn.TransformerEncoder``, or any model with such stages.
    stages : str or iterable of str
        Dotted paths of the stages (``"layer3"``, ``"encoder"``, ``"encoder.layers"``; ``""`` is ``model``
        itself). A stage is an ``nn.Sequential`` of blocks (replaced by a :class:`MomentumStage`), an
        ``nn.ModuleList`` of blocks (replaced by a :class:`MomentumLayers`), or an ``nn.TransformerEncoder``
        (its ``layers`` are replaced by a :class:`MomentumLayers`; its masks and ``is_causal`` reach every
        layer).
    gamma : float in [0, 1]
        Momentum coefficient (dimensionless; the paper uses 0.9). ``gamma = 0`` gives back the original
        network and cannot be reversed, so it needs ``gradient="backprop"`` (a memory-free mode raises).
    keep_first_block : bool
        Keep each stage's first block out of the momentum stack (needed when it changes the shape, as the
        first block of a ResNet stage does). A stage must then have at least two blocks.
    gradient : str
        Gradient mode of the momentum stacks, a key of ``ode_momentum.GRADIENTS`` (default ``"exact"``:
        activation memory independent of the stage depth and exact gradients; the damping applied is the
        dyadic ``MomentumResNet.effective_gamma``, within ``2^-31`` of ``gamma``).
    residual : bool
        ``False`` (default): each block includes its skip connection. ``True``: each block *is* the
        residual function (blocks without a skip).
    gradient_options : dict, optional
        Options of the gradient mode (``MomentumResNet``'s ``gradient_options``).

    Returns
    -------
    nn.Module
        The converted copy (on the device and in the dtype of ``model``; same parameters and count).

    Raises
    ------
    TypeError
        If ``model`` is not a module, a path is not a str, a stage has an unsupported type, or an option of
        the gradient mode is unknown.
    ValueError
        If ``stages`` is empty, repeats or nests paths, names a missing submodule or an already converted
        stage; a stage has too few blocks, or a block to be stacked has a ``downsample`` (it changes the
        shape); ``gamma`` is outside [0, 1] or 0 with a memory-free gradient; ``gradient`` is unknown.

    References
    ----------
    Sander et al., ICML 2021, section 5 (Momentum ResNets from pretrained ResNets).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module; got {type(model).__name__}.")
    stages = _normalise_stages(stages)
    gamma = _check_settings(gamma, gradient, gradient_options, keep_first_block=keep_first_block, residual=residual)
    for path in stages:  # fail before the copy
        _stage(model, path)
    return convert_in_place(
        copy.deepcopy(model), stages, gamma=gamma, keep_first_block=keep_first_block, gradient=gradient,
        residual=residual, gradient_options=gradient_options,
    )


def transform_to_momentumnet(
    model: nn.Module,
    sub_layers: str | Iterable[str] = DEFAULT_STAGES,
    keep_first_layer: bool = True,
    gamma: float = 0.9,
    use_backprop: bool = False,
    is_residual: bool = False,
) -> nn.Module:
    """:func:`to_momentum` with the keyword names of the ``momentumnet`` package, for people migrating.

    ``sub_layers`` are the ``stages``, ``keep_first_layer`` is ``keep_first_block``, ``is_residual`` is
    ``residual``. ``use_backprop=False`` (the default, as there) uses the memory-free ``"exact"`` gradient
    mode (exact at any depth; the reference package's memory-free mode is not); ``use_backprop=True`` uses
    ``"backprop"``. Unlike the reference, ``gamma = 0`` with ``use_backprop=False`` raises instead of
    returning wrong gradients.

    Parameters
    ----------
    model : nn.Module
    sub_layers : str or iterable of str
        Dotted paths of the stages (default ``("layer1", "layer2", "layer3", "layer4")``).
    keep_first_layer : bool
    gamma : float in [0, 1]
    use_backprop : bool
    is_residual : bool

    Returns
    -------
    nn.Module
        The converted deep copy.

    Raises
    ------
    TypeError, ValueError
        As :func:`to_momentum`; ``gamma = 0`` without ``use_backprop=True`` is a ``ValueError``.
    """
    if not isinstance(use_backprop, bool):
        raise TypeError(f"`use_backprop` must be True or False; got {use_backprop!r} ({type(use_backprop).__name__}).")
    gradient = "backprop" if use_backprop else "exact"
    if not use_backprop and check_gamma(gamma) == 0.0:
        raise ValueError(
            "`gamma` = 0 with use_backprop=False: a gamma = 0 stack is a plain ResNet, whose velocity is "
            "forgotten, so it cannot be reversed. Pass use_backprop=True."
        )
    return to_momentum(
        model, sub_layers, gamma=gamma, keep_first_block=keep_first_layer, gradient=gradient, residual=is_residual
    )


def convert_in_place(
    model: nn.Module,
    stages: Iterable[str],
    *,
    gamma: float,
    keep_first_block: bool,
    gradient: str,
    residual: bool,
    gradient_options: dict | None,
) -> nn.Module:
    """:func:`to_momentum` without the copy: convert ``model`` itself and return it (a new object only
    when the stage ``""`` replaces the root)."""
    for path in _normalise_stages(stages):
        kind, module = _stage(model, path)
        blocks = list(module.layers if kind == "encoder" else module)
        first, rest = _split_blocks(path, blocks, keep_first_block)
        momentum = MomentumResNet(
            rest, gamma, residual=residual, gradient=gradient, gradient_options=gradient_options
        )
        if kind == "encoder":
            module.layers = MomentumLayers(first, momentum)
        elif kind == "sequential":
            model = _replace(model, path, MomentumStage(first, momentum))
        else:
            model = _replace(model, path, MomentumLayers(first, momentum))
    return model


def momentum_stages(model: nn.Module) -> list[tuple[str, MomentumResNet]]:
    """``(path, stack)`` of every :class:`~ode_momentum.MomentumResNet` in ``model``, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MomentumResNet)]


def with_gamma(
    model: nn.Module, gamma: float, *, gradient: str | None = None, gradient_options: dict | None = None
) -> nn.Module:
    """Return a deep copy of ``model`` in which every ``MomentumResNet`` has momentum coefficient ``gamma``.

    The residual functions (and their weights) are kept; ``init_function`` and ``residual`` too. Used to
    evaluate a model at a ``gamma`` other than the one it was trained with.

    Parameters
    ----------
    model : nn.Module
        A model holding at least one ``MomentumResNet`` (e.g. from :func:`to_momentum`).
    gamma : float in [0, 1]
        New momentum coefficient; ``0`` needs ``gradient="backprop"``.
    gradient : str, optional
        New gradient mode; default: each stack keeps its own (and its options).
    gradient_options : dict, optional
        Options of ``gradient`` (only with ``gradient``).

    Returns
    -------
    nn.Module

    Raises
    ------
    TypeError
        If ``model`` is not a module.
    ValueError
        If ``model`` holds no ``MomentumResNet``, or ``gamma`` is invalid for a stack's gradient mode.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module; got {type(model).__name__}.")
    if gradient is not None:
        gamma = _check_settings(gamma, gradient, gradient_options, keep_first_block=True, residual=False)
    elif gradient_options is not None:
        raise ValueError("`gradient_options` needs `gradient`; pass both, e.g. gradient='exact'.")
    if not momentum_stages(model):
        raise ValueError(
            f"`model` ({type(model).__name__}) holds no MomentumResNet; convert it first with to_momentum()."
        )
    model = copy.deepcopy(model)
    for path, old in momentum_stages(model):
        mode = old.gradient if gradient is None else gradient
        if gradient is None:
            options = old._options
            options = dataclasses.asdict(options) if dataclasses.is_dataclass(options) else None
        else:
            options = gradient_options
        new = MomentumResNet(
            list(old.functions), gamma, init_function=old.init_function, residual=old.residual, gradient=mode,
            gradient_options=options,
        )
        new.train(old.training)
        model = _replace(model, path, new)
    return model


def momentum_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Rename the keys of a plain model's ``state_dict`` to those of the converted ``model``.

    Keys already in the converted layout, and keys outside the converted stages, are kept. The values are
    not copied.

    Parameters
    ----------
    model : nn.Module
        A model returned by :func:`to_momentum` (or built with ``momentum=True`` by ``ode_momentum.models``).
    state_dict : mapping of str to Tensor
        A state dict in the plain layout (e.g. torchvision's), the converted layout, or a mix.

    Returns
    -------
    dict
        The state dict with converted keys (renamed entries move to the end).
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"`state_dict` must be a mapping of str to Tensor; got {type(state_dict).__name__}.")
    out = dict(state_dict)
    for path, stage in _converted_stages(model):
        _rename_plain_keys(stage, out, _prefix(path))
    return out


def plain_state_dict(model: nn.Module) -> dict:
    """The state dict of a converted ``model`` with the keys of the original (plain) model.

    The inverse of :func:`momentum_state_dict`: load it into the unconverted architecture (e.g. a
    torchvision ResNet) to use the weights of a fine-tuned momentum model there.

    Returns
    -------
    dict
        ``str -> Tensor`` (the tensors of ``model.state_dict()``, not copies).
    """
    state = model.state_dict()
    for path, stage in reversed(_converted_stages(model)):  # inner stages first: their paths are converted
        prefix = _prefix(path)
        mapping = _local_mapping(stage)
        renamed = {}
        for key, value in state.items():
            new = key
            if key.startswith(prefix):
                local = key[len(prefix):]
                for converted, plain in mapping:
                    if local.startswith(converted):
                        new = prefix + plain + local[len(converted):]
                        break
            renamed[new] = value
        state = renamed
    return state


# ----------------------------------------------------------------------------------------------- helpers


def _check_settings(gamma, gradient, gradient_options, *, keep_first_block, residual) -> float:
    check_choice("gradient", gradient, GRADIENTS)
    resolve_gradient(gradient, gradient_options)  # unknown options raise here, before any work
    gamma = check_gamma(gamma, allow_zero=gradient == "backprop")
    for name, value in (("keep_first_block", keep_first_block), ("residual", residual)):
        if not isinstance(value, bool):
            raise TypeError(f"`{name}` must be True or False; got {value!r} ({type(value).__name__}).")
    return gamma


def _normalise_stages(stages) -> tuple[str, ...]:
    if isinstance(stages, str):
        stages = (stages,)
    try:
        stages = tuple(stages)
    except TypeError:
        raise TypeError(
            f"`stages` must be a dotted path or an iterable of them, e.g. ('layer1', 'layer2'); got "
            f"{type(stages).__name__}."
        ) from None
    if not stages:
        raise ValueError("`stages` is empty; name at least one stage, e.g. stages=('layer1', 'layer2').")
    for path in stages:
        if not isinstance(path, str):
            raise TypeError(f"`stages` entries must be dotted paths (str); got {path!r} ({type(path).__name__}).")
    if len(set(stages)) != len(stages):
        raise ValueError(f"`stages` repeats a path: {list(stages)}. Name each stage once.")
    for a in stages:
        for b in stages:
            if a != b and (a == "" or b.startswith(a + ".")):
                raise ValueError(
                    f"`stages` entry {b!r} lies inside {a!r}; stages must not nest. Convert one of them."
                )
    return stages


def _stage(model: nn.Module, path: str):
    """``(kind, module)`` of the stage at ``path``: kind is "encoder", "sequential" or "list"."""
    try:
        module = model.get_submodule(path)
    except AttributeError:
        names = [name for name, _ in model.named_children()]
        raise ValueError(
            f"`stages` entry {path!r} is not a submodule of the {type(model).__name__}; its children are "
            f"{names}. Use dotted paths such as 'layer1' or 'encoder.layers'."
        ) from None
    if isinstance(module, _STAGE_TYPES) or (
        isinstance(module, nn.TransformerEncoder) and isinstance(module.layers, _STAGE_TYPES)
    ):
        raise ValueError(f"stage {path!r} is already converted to a momentum stage; convert each stage once.")
    if isinstance(module, nn.TransformerEncoder):
        return "encoder", module
    if isinstance(module, nn.Sequential):
        return "sequential", module
    if isinstance(module, nn.ModuleList):
        return "list", module
    raise TypeError(
        f"stage {path!r} is a {type(module).__name__}; a stage must be an nn.Sequential or nn.ModuleList of "
        "residual blocks, or an nn.TransformerEncoder."
    )


def _split_blocks(path: str, blocks: list[nn.Module], keep_first_block: bool):
    if keep_first_block and len(blocks) < 2:
        raise ValueError(
            f"stage {path!r} has {len(blocks)} block(s); with keep_first_block=True at least 2 are needed (the "
            "first stays a plain block). Leave this stage out of `stages`, or pass keep_first_block=False."
        )
    if not blocks:
        raise ValueError(f"stage {path!r} has no blocks.")
    first, rest = (blocks[0], blocks[1:]) if keep_first_block else (None, blocks)
    for i, block in enumerate(rest, start=int(keep_first_block)):
        if getattr(block, "downsample", None) is not None:
            hint = "keep it with keep_first_block=True" if i == 0 else "split the stage before it"
            raise ValueError(
                f"block {i} of stage {path!r} has a `downsample` branch, so it changes the shape; a momentum "
                f"stack needs blocks that keep it ({hint})."
            )
    return first, rest


def _replace(model: nn.Module, path: str, new: nn.Module) -> nn.Module:
    if path == "":
        return new
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent), name, new)
    return model


def _prefix(path: str) -> str:
    return f"{path}." if path else ""


def _converted_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _STAGE_TYPES)]


def _local_mapping(stage) -> list[tuple[str, str]]:
    """``(converted prefix, plain prefix)`` of every block of ``stage``, relative to the stage."""
    keep = int(stage.keep_first_block)
    n = len(stage.blocks())
    mapping = [("0.", "0.")] if keep else []
    mapping += [(f"{keep}.functions.{i - keep}.", f"{i}.") for i in range(keep, n)]
    return mapping


def _rename_plain_keys(stage, state_dict, prefix: str) -> None:
    """Rename, in place, the keys of ``state_dict`` under ``prefix`` that are in the plain layout."""
    own = set(stage.state_dict().keys())
    plain_to_converted = {plain: converted for converted, plain in _local_mapping(stage)}
    for key in [k for k in state_dict if k.startswith(prefix)]:
        local = key[len(prefix):]
        if local in own:
            continue
        head, dot, rest = local.partition(".")
        converted = plain_to_converted.get(head + dot)
        if converted is not None and converted != head + dot:
            state_dict[prefix + converted + rest] = state_dict.pop(key)


__all__ = [
    "DEFAULT_STAGES",
    "MomentumLayers",
    "MomentumStage",
    "momentum_stages",
    "momentum_state_dict",
    "plain_state_dict",
    "to_momentum",
    "transform_to_momentumnet",
    "with_gamma",
]
