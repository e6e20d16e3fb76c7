"""Activation memory: bytes of the tensors autograd saves for the backward pass."""

from __future__ import annotations

import weakref
from typing import Callable

import torch
from torch import nn


def saved_tensor_bytes(fn: Callable, *args, **kwargs) -> int:
    """Bytes of the tensors saved for backward by the graph that ``fn(*args, **kwargs)`` returns.

    Every tensor that autograd packs (``torch.autograd.graph.saved_tensors_hooks``) is tracked; those still
    held by the graph when ``fn`` returns are counted, once per underlying storage (views and repeats of one
    storage count once, at the storage's full size). Graphs built and dropped inside ``fn`` (a memory-free
    mode evaluating a residual with autograd on and keeping only its value) hold nothing afterwards and are
    not counted. Parameters are excluded: ``nn.Parameter`` instances and any tensor sharing storage with a
    parameter of ``fn`` or of a module among the arguments. Gradients must be enabled and something must
    require grad, or nothing is saved.

    Parameters
    ----------
    fn : callable
        Typically a module's forward, e.g. ``saved_tensor_bytes(model, x)``.
    *args, **kwargs
        Passed to ``fn``.

    Returns
    -------
    int
        Bytes (``untyped_storage().nbytes()`` summed over unique storages).

    References
    ----------
    ``docs/architecture.md`` (Measuring); PyTorch's saved-tensor hooks tutorial.
    """
    return int(sum(t.untyped_storage().nbytes() for t in saved_tensors(fn, *args, **kwargs)))


def saved_tensors(fn: Callable, *args, **kwargs) -> list[torch.Tensor]:
    """The tensors :func:`saved_tensor_bytes` counts: one (detached) per storage still held by the graph that
    ``fn(*args, **kwargs)`` returns, parameters excluded, in the order autograd first saved them."""
    excluded = set()
    for obj in (fn, *args, *kwargs.values()):
        if isinstance(obj, nn.Module):
            excluded.update(_storage_key(p) for p in obj.parameters())
    held: list[weakref.ref] = []

    def pack(t: torch.Tensor):
        box = _Held(t)
        if not isinstance(t, nn.Parameter):
            held.append(weakref.ref(box))
        return box

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box.tensor):
        out = fn(*args, **kwargs)
    seen: dict = {}
    for ref in held:
        box = ref()
        if box is None:
            continue
        key = _storage_key(box.tensor)
        if key not in excluded and key not in seen:
            seen[key] = box.tensor
    del out
    return list(seen.values())


class _Held:
    """What the graph stores for a saved tensor; alive exactly as long as the graph keeps it."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor):
        # detached: a box holding a saved *output* (which references its own grad_fn) would otherwise form a
        # cycle through autograd's C++ graph that keeps dropped graphs alive
        self.tensor = tensor.detach()


def _storage_key(t: torch.Tensor):
    return (t.untyped_storage().data_ptr(), t.device)
