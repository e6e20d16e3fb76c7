"""State that a recomputing backward must replay or protect: RNG streams, module buffers, autocast.

The same pattern as ``torch.utils.checkpoint``: random number generator states are captured before each
evaluation of a residual function in the forward and restored before its recomputation; module buffers
(BatchNorm running statistics) are snapshotted before the backward recomputes and restored after, so they
change exactly once per step; the autocast state of the forward is re-entered for every recomputation.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.checkpoint import get_device_states, set_device_states


class RNGLog:
    """RNG states captured before each residual evaluation of the forward, replayed in reverse order.

    Consecutive identical states are stored once, so a deterministic network keeps a single state (about
    5 KB for the CPU generator), whatever its depth.
    """

    def __init__(self, *tensors: torch.Tensor, enabled: bool = True):
        self.enabled = enabled
        self._devices_tensors = tensors
        self._cpu: list[torch.Tensor] = []
        self._dev: list[tuple[list[int], list[torch.Tensor]]] = []
        self._index: list[int] = []  # evaluation k -> position of its state in the lists above
        self._use_devices = any(t.device.type not in ("cpu", "meta") for t in tensors)
        self._last_cpu_bytes = b""  # the last stored CPU state as bytes: compared in a memcmp, not an op

    def record(self) -> None:
        if not self.enabled:
            self._index.append(-1)
            return
        cpu = torch.get_rng_state()
        cpu_bytes = cpu.numpy().tobytes()
        dev = get_device_states(*self._devices_tensors) if self._use_devices else ([], [])
        if self._cpu and cpu_bytes == self._last_cpu_bytes and _same_device_states(dev, self._dev[-1]):
            self._index.append(len(self._cpu) - 1)
            return
        self._cpu.append(cpu)
        self._last_cpu_bytes = cpu_bytes
        self._dev.append(dev)
        self._index.append(len(self._cpu) - 1)

    def __len__(self) -> int:
        return len(self._index)

    def restore(self, k: int) -> None:
        """Set the generators to their state before forward evaluation ``k``."""
        i = self._index[k]
        if i < 0:
            return
        torch.set_rng_state(self._cpu[i])
        devices, states = self._dev[i]
        if devices:
            set_device_states(devices, states)

    def fork(self):
        """Context that restores the caller's RNG state when the backward is done."""
        devices = self._dev[0][0] if self._dev else []
        return torch.random.fork_rng(devices=devices, enabled=True)


def _same_device_states(a, b) -> bool:
    return a[0] == b[0] and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


@contextlib.contextmanager
def buffers_unchanged(module: nn.Module | None, buffers: list[torch.Tensor] | None = None):
    """Restore every buffer of ``module`` on exit (BatchNorm statistics are updated once, in the forward).

    ``buffers``, if given, is ``list(module.buffers())`` already collected by the caller.
    """
    if module is None:
        yield
        return
    saved = [(b, b.clone()) for b in (module.buffers() if buffers is None else buffers)]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, copy in saved:
                b.copy_(copy)


class AutocastState:
    """The autocast setting of the forward for the state's device, re-entered around recomputations."""

    def __init__(self, device_type: str):
        self.device_type = device_type
        self.enabled = torch.is_autocast_enabled(device_type)
        self.dtype = torch.get_autocast_dtype(device_type)

    def __call__(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)


@dataclass
class ModuleMembers:
    """What one walk over a module tree finds: parameter slots, unique parameters and unique buffers.

    ``slots`` are ``(submodule, name, parameter)`` for every registration (a tied parameter once per name);
    ``parameters`` and ``buffers`` hold each tensor once, in the order of ``module.parameters()`` /
    ``module.buffers()``.
    """

    slots: list = field(default_factory=list)
    parameters: list = field(default_factory=list)
    buffers: list = field(default_factory=list)


def module_members(module: nn.Module | None) -> ModuleMembers:
    """Walk ``module`` once (pre-order, each submodule once, as ``module.modules()``), without the nested
    generators of ``named_modules``: about 0.2 ms per ``parameters()`` or ``buffers()`` call on a stack of 32
    blocks, paid twice per step of a training loop before."""
    members = ModuleMembers()
    if module is None:
        return members
    seen_modules, seen = set(), set()
    stack = [module]
    while stack:
        sub = stack.pop()
        if id(sub) in seen_modules:
            continue
        seen_modules.add(id(sub))
        for name, p in sub._parameters.items():
            if p is not None:
                members.slots.append((sub, name, p))
                if id(p) not in seen:
                    seen.add(id(p))
                    members.parameters.append(p)
        for b in sub._buffers.values():
            if b is not None and id(b) not in seen:
                seen.add(id(b))
                members.buffers.append(b)
        stack.extend(m for m in reversed(sub._modules.values()) if m is not None)
    return members


@contextlib.contextmanager
def parameters_rebound(module: nn.Module | None, aliases: dict[int, torch.Tensor], slots: list | None = None):
    """Within the context, every parameter ``p`` of ``module`` with ``id(p)`` in ``aliases`` reads as its alias.

    ``slots``, if given, is ``module_members(module).slots`` already collected by the caller. Recomputing
    against detached aliases (rather than the parameters themselves) keeps user hooks on the
    parameters from firing once per layer; the gradients reach the parameters once, from the autograd
    Function. Tied parameters (one object under several names or modules) share one alias. Written here
    because ``torch.func.functional_call`` (torch 2.13) leaves tied parameters as plain tensors on exit.
    """
    swapped = []
    if module is not None and aliases:
        if slots is None:
            slots = module_members(module).slots
        swapped = [(sub, name, p) for sub, name, p in slots if id(p) in aliases]
    try:
        for sub, name, p in swapped:
            sub._parameters[name] = aliases[id(p)]
        yield
    finally:
        for sub, name, p in swapped:
            sub._parameters[name] = p
