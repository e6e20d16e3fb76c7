"""Activation memory: bytes of the tensors autograd saves for the backward pass."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def saved_tensor_bytes(fn: Callable, *args, **kwargs) -> int:
    """Bytes of the tensors saved for backward while ``fn(*args, **kwargs)`` runs.

    Every tensor that autograd packs (``torch.autograd.graph.saved_tensors_hooks``) is counted once per
    underlying storage (views and repeats of one storage count once, at the storage's full size).
    Parameters are excluded: ``nn.Parameter`` instances and any tensor sharing storage with a parameter of
    ``fn`` or of a module among the arguments. Gradients must be enabled and something must require grad,
    or nothing is saved.

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
    excluded = set()
    for obj in (fn, *args, *kwargs.values()):
        if isinstance(obj, nn.Module):
            excluded.update(_storage_key(p) for p in obj.parameters())
    seen: dict = {}

    def pack(t: torch.Tensor):
        key = _storage_key(t)
        if not isinstance(t, nn.Parameter) and key not in excluded and key not in seen:
            seen[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args, **kwargs)
    del out
    return int(sum(seen.values()))


def _storage_key(t: torch.Tensor):
    return (t.untyped_storage().data_ptr(), t.device)
