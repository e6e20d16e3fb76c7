"""How close is `gradient="exact"` to the cost of its own arithmetic? A paired timing, MLP stacks, depth 32.

Times, in one process and interleaved (so the machine's drift cancels), one forward+backward of:

- `backprop`: `MomentumResNet(..., gradient="backprop")`;
- `exact`: `MomentumResNet(..., gradient="exact")` (native kernels);
- `stripped`: the exact mode's arithmetic written as a bare loop: the same native kernels and the same
  autograd calls (one residual evaluation per step forward; one evaluation and one vector-Jacobian product per
  step backward), but no engine: no RNG replay, no checksums, no range guard, no leaf check, no parameter
  aliases. Its input and parameter gradients are checked to be `torch.equal` to the exact mode's, so it does
  the same work.

`stripped / backprop` is the floor of any engine built from these kernels and Python-driven per-step autograd
calls on this machine; `exact / stripped` is what the engine's guarantees and structure cost on top.

    python benchmarks/exact_floor.py [--widths 64 512] [--pairs 40] [--out benchmarks/results/floor.json]

Single torch thread, CPU time (`time.process_time`), medians over the pairs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.autograd.graph import _engine_run_backward

import ode_momentum as om
from ode_momentum.gradients import fixed_point as fp
from ode_momentum.gradients import fixed_point_kernels as fpk

DEPTH, GAMMA, FRAC_BITS, GAMMA_BITS = 32, 0.9, 44, 30
BATCH = {64: 256, 512: 128}  # the benchmark stacks mlp64 and mlp512


def stripped_exact(blocks, x):
    """Forward and backward of `loss = x_N.square().sum()` with the exact mode's arithmetic and nothing else;
    returns the input gradient and the parameter gradients per layer."""
    kern = fpk.select("native", x.device)
    n = fp.quantise(GAMMA, GAMMA_BITS)
    g = n / 2**GAMMA_BITS
    c = 1.0 - g
    scale, dscale = c * 2.0**FRAC_BITS, 2.0**-FRAC_BITS
    X = fp.encode(x, FRAC_BITS)
    x_n = kern.decode(X, dscale, x.dtype)  # what the first residual reads
    V = torch.zeros_like(X)
    word = torch.zeros_like(X)
    for i, block in enumerate(blocks):  # forward: evaluated as recorded (autograd on, value detached)
        with torch.enable_grad():
            f = block(x_n.detach().requires_grad_()).detach()
        X, V, word, x_n, *_ = kern.damp_kick_drift2(X, V, word, n, fp.dither(i, GAMMA_BITS), GAMMA_BITS, f, scale,
                                                    1.0, x.dtype, dscale)
    ax, av, grads = 2 * x_n, torch.zeros_like(x_n), [None] * len(blocks)
    for i in range(len(blocks) - 1, -1, -1):  # backward: undrift, evaluate with graph, VJP, undo the kick
        av = av + ax
        X, x_n, _, _ = kern.undrift_decode(X, V, 1.0, x.dtype, dscale)
        xd = x_n.requires_grad_()
        params = tuple(blocks[i].parameters())
        with torch.enable_grad():
            out = blocks[i](xd)
        gx, *grads[i] = _engine_run_backward((out,), (av * c,), True, False, (xd, *params), True,
                                             accumulate_grad=False)
        ax = ax + gx
        av = av * g
        V, word, _ = kern.unkick_undamp2(V, word, n, fp.dither(i, GAMMA_BITS), GAMMA_BITS, out.detach(), scale)
    return ax, grads


def measure(width: int, pairs: int) -> dict:
    torch.manual_seed(0)
    blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))
                           for _ in range(DEPTH))
    x = torch.randn(BATCH[width], width)
    models = {mode: om.MomentumResNet(blocks, gamma=GAMMA, gradient=mode) for mode in ("backprop", "exact")}

    def run(mode):
        def go():
            if mode == "stripped":
                return stripped_exact(blocks, x)
            xx = x.clone().requires_grad_()
            models[mode](xx).square().sum().backward()
            return xx.grad, [[p.grad for p in b.parameters()] for b in blocks]
        return go

    # the stripped loop computes what the exact mode computes, bit for bit
    blocks.zero_grad(set_to_none=True)
    gx_exact, grads_exact = run("exact")()
    gx_stripped, grads_stripped = run("stripped")()
    same = torch.equal(gx_exact, gx_stripped) and all(
        torch.equal(a, b) for ga, gb in zip(grads_exact, grads_stripped) for a, b in zip(ga, gb))
    if not same:
        raise AssertionError("the stripped loop's gradients differ from the exact mode's: it does other work")

    runs = {name: run(name) for name in ("backprop", "exact", "stripped")}
    for go in runs.values():  # warm-up
        go()
    seconds = {name: [] for name in runs}
    for _ in range(pairs):
        for name, go in runs.items():
            blocks.zero_grad(set_to_none=True)
            start = time.process_time()
            go()
            seconds[name].append(time.process_time() - start)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    return {
        "width": width, "batch": BATCH[width], "depth": DEPTH, "pairs": pairs,
        "backprop_us_per_step": 1e6 * median["backprop"] / DEPTH,
        "exact_over_backprop": median["exact"] / median["backprop"],
        "stripped_over_backprop": median["stripped"] / median["backprop"],
        "exact_over_stripped": median["exact"] / median["stripped"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 512], choices=sorted(BATCH))
    parser.add_argument("--pairs", type=int, default=40, help="interleaved repetitions (default 40)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/floor.json"))
    args = parser.parse_args()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = [measure(w, args.pairs) for w in args.widths]
    finally:
        torch.set_num_threads(threads)
    for r in rows:
        print(f"MLP width {r['width']}, batch {r['batch']}, depth {r['depth']}: backprop "
              f"{r['backprop_us_per_step']:.0f} us/step; exact {r['exact_over_backprop']:.2f}x, stripped loop "
              f"{r['stripped_over_backprop']:.2f}x backprop; exact / stripped {r['exact_over_stripped']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "torch": torch.__version__, "machine": platform.processor()
                                    or platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                 time.gmtime())}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
