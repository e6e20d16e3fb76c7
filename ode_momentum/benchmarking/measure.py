"""The measurements: saved-activation bytes, device peak memory, interleaved time ratios, gradient errors.

All of them run ``loss = model(x).square().mean(); loss.backward()`` on one stack. Conventions (DESIGN.md
section 5): saved bytes from autograd's saved-tensor hooks (unique storages, parameters excluded); time as
the median of per-pair ratios of interleaved runs (A B, B A, A B, ...) after a warm-up, in CPU time
(``time.process_time``) on CPU and in synchronised wall time on CUDA; gradient error as the max relative error
``max|g - g_ref| / max|g_ref|`` over the input gradient and every parameter gradient, against float64
backprop of the same forward and weights. Peak RSS runs in a fresh process (:mod:`.worker`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from ..analysis.memory import saved_tensor_bytes, saved_tensors
from .stacks import parameters


def loss_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The benchmark's loss: mean squared output (float32 accumulation for low-precision states)."""
    return model(x).float().square().mean()


def clear_grads(params: list[nn.Parameter], x: torch.Tensor | None = None) -> None:
    for p in params:
        p.grad = None
    if x is not None:
        x.grad = None


def fwd_bwd(model: nn.Module, x: torch.Tensor) -> None:
    """One forward and backward pass (gradients accumulate in ``.grad``)."""
    loss_of(model, x).backward()


def saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd saves for the backward during ``model(x)`` (``x`` must require grad)."""
    return saved_tensor_bytes(model, x)


def saved_tensor_summary(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, int], int]:
    """What :func:`saved_bytes` counts, by kind: ``({"int64[256, 64]": count, ...}, total bytes)``.

    ``ode_momentum.analysis.saved_tensors`` in a second forward (saved-tensor hooks do not nest, so the two
    cannot share one pass); the runner checks that the totals agree.
    """
    tensors = saved_tensors(model, x)
    kinds = [f"{str(t.dtype).replace('torch.', '')}{list(t.shape)}" for t in tensors]
    summary: dict[str, int] = {}
    for kind in kinds:
        summary[kind] = summary.get(kind, 0) + 1
    total = sum(t.untyped_storage().nbytes() for t in tensors)
    return dict(sorted(summary.items(), key=lambda kv: -kv[1])), int(total)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cuda_peak_bytes(model: nn.Module, functions: list[nn.Module], x: torch.Tensor) -> int:
    """``max_memory_allocated`` during one forward+backward, less the memory allocated before it.

    Parameter gradients are allocated (zeroed) beforehand and a warm-up pass runs first, so the figure is the
    activations plus the backward's transients, not the gradients or lazy initialisation.
    """
    params = parameters(functions)
    fwd_bwd(model, x)
    for p in params:
        p.grad = torch.zeros_like(p) if p.grad is None else p.grad.zero_()
    x.grad = None
    _sync(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    base = torch.cuda.memory_allocated(x.device)
    fwd_bwd(model, x)
    _sync(x.device)
    return int(torch.cuda.max_memory_allocated(x.device) - base)


def time_ratio(
    model_a: nn.Module,
    model_b: nn.Module,
    functions: list[nn.Module],
    x: torch.Tensor,
    *,
    repeats: int,
    warmup: int,
    budget_s: float | None = None,
    min_repeats: int = 3,
) -> dict:
    """Median over interleaved pairs of ``time(B) / time(A)`` for one forward+backward each.

    Pairs alternate the order (A B, then B A, ...) so that a slow drift of the machine cancels. The clock is
    ``time.process_time`` (CPU time of this process, all its threads: robust to other processes on a shared
    machine) on CPU and synchronised ``time.perf_counter`` on CUDA. With ``budget_s``, a slow pair (timed in
    the warm-up) lowers the number of measured pairs to fit the budget, but never below ``min_repeats``.

    Returns
    -------
    dict
        ``value`` (median ratio), ``ratio_q25``/``ratio_q75`` (quartiles of the per-pair ratios),
        ``seconds_a``/``seconds_b`` (medians), ``repeats``, ``warmup``, ``clock``.
    """
    params = parameters(functions)
    device = x.device
    clock: Callable[[], float] = time.perf_counter if device.type == "cuda" else time.process_time

    def run(model) -> float:
        clear_grads(params, x)
        _sync(device)
        start = clock()
        fwd_bwd(model, x)
        _sync(device)
        return clock() - start

    pair_s = None
    for _ in range(warmup):
        start = time.perf_counter()
        run(model_a), run(model_b)
        pair_s = time.perf_counter() - start
    if budget_s is not None and pair_s is not None and pair_s * repeats > budget_s:
        repeats = max(min_repeats, int(budget_s / pair_s))
    pairs = []
    for i in range(repeats):
        if i % 2 == 0:
            a = run(model_a)
            b = run(model_b)
        else:
            b = run(model_b)
            a = run(model_a)
        pairs.append((a, b))
    clear_grads(params, x)
    ratios = sorted(b / a for a, b in pairs if a > 0)
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
    return {
        "value": statistics.median(ratios),
        "ratio_q25": quartiles[0],
        "ratio_q75": quartiles[2],
        "seconds_a": statistics.median(a for a, _ in pairs),
        "seconds_b": statistics.median(b for _, b in pairs),
        "repeats": repeats,
        "warmup": warmup,
        "clock": "perf_counter (synchronised)" if device.type == "cuda" else "process_time",
    }


def gradients(model: nn.Module, functions: list[nn.Module], x: torch.Tensor, *, keep: bool = True) -> list:
    """``[dL/dx, dL/dp for p in parameters(functions)]`` of one forward+backward.

    ``keep=True`` returns float64 CPU copies (a reference); ``keep=False`` returns the gradient tensors
    themselves (the parameters' ``.grad`` are detached from them), to be compared one at a time without a
    float64 copy of the whole set.
    """
    params = parameters(functions)
    clear_grads(params)
    x = x.detach().clone().requires_grad_(True)
    fwd_bwd(model, x)
    grads = [x.grad] + [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    clear_grads(params)
    if not keep:
        return grads
    return [g.detach().double().cpu() for g in grads]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``max|got - want| / max|want|`` (absolute when ``want`` is zero); ``inf`` when not finite."""
    err = float((got.detach().to(want.device, torch.float64) - want).abs().max())
    scale = float(want.abs().max())
    value = err / scale if scale > 0 else err
    return value if value == value and value != float("inf") else float("inf")


def gradient_error(got: list[torch.Tensor], want: list[torch.Tensor]) -> dict:
    """Max relative error of the input gradient, of the parameter gradients, and of both."""
    error_input = relative_error(got[0], want[0])
    error_params = max((relative_error(g, w) for g, w in zip(got[1:], want[1:])), default=0.0)
    return {"value": max(error_input, error_params), "error_input": error_input, "error_params": error_params}
