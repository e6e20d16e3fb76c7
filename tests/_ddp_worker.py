"""Helpers of ``test_distributed.py``: the model, the training loop, and the worker that
``torch.multiprocessing.spawn`` runs in each of the two gloo processes.

Not a test module (the leading underscore keeps pytest from collecting it). The parent test imports
:func:`build_model` and :func:`train` to compute the single-process, full-batch reference with exactly the
same code the workers run under ``DistributedDataParallel``.
"""

from __future__ import annotations

import datetime
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import ode_momentum as om

WORLD_SIZE = 2
WIDTH = 8
DEPTH = 4
BATCH = 8  # split into WORLD_SIZE equal shards, so the mean of the shard means is the full-batch mean
N_ITERS = 2  # the second forward is where DDP reports a reduction left unfinished by the first backward
LEARNING_RATE = 0.1
GAMMA = 0.9
MODE_OPTIONS = {
    "backprop": None,
    # "raise": a drifting reconstruction must fail the test, not warn
    "reversible": {"on_drift": "raise"},
    "checkpoint": {"every": 2, "on_drift": "raise"},
    "exact": None,
    "auto": None,
}


@dataclass(frozen=True)
class Config:
    """One distributed run: the gradient mode, whether a block leaves a parameter unused, DDP's flag."""

    mode: str
    unused: bool
    find_unused_parameters: bool = False
    static_graph: bool = False

    @property
    def name(self) -> str:
        used = "unused" if self.unused else "all_used"
        return f"{self.mode}-{used}-find_unused={self.find_unused_parameters}-static={self.static_graph}"


class BlockWithUnusedParameter(nn.Module):
    """A residual function that owns a trainable parameter its forward never reads."""

    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.unused = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return torch.tanh(self.lin(x))


class Net(nn.Module):
    """A stem and a head trained by ordinary autograd around a memory-free momentum stack (no BatchNorm:
    per-process batch statistics would differ from the full batch's)."""

    def __init__(self, mode: str, unused: bool):
        super().__init__()
        self.stem = nn.Linear(WIDTH, WIDTH)
        blocks = [nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh(), nn.Linear(WIDTH, WIDTH)) for _ in range(DEPTH)]
        if unused:
            blocks[1] = BlockWithUnusedParameter(WIDTH)
        self.stack = om.MomentumResNet(blocks, GAMMA, gradient=mode, gradient_options=MODE_OPTIONS[mode])
        self.head = nn.Linear(WIDTH, 1)

    def forward(self, x):
        return self.head(self.stack(self.stem(x)))


def build_model(config: Config) -> Net:
    """The same float64 weights in every process and in the reference (seeded construction)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Net(config.mode, config.unused).double()


def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, WIDTH, dtype=torch.float64, generator=gen)
    y = torch.randn(BATCH, 1, dtype=torch.float64, generator=gen)
    return x, y


def train(model: nn.Module, params: list[nn.Parameter], x, y) -> dict:
    """``N_ITERS`` SGD steps on a mean-reduced loss; per iteration, every parameter's gradient (``None`` if
    it got none) and how often its tensor hook and post-accumulate hook fired during the backward."""
    counts = {"tensor": [0] * len(params), "post": [0] * len(params)}
    handles = []

    def counter(kind, i):
        def hook(_):
            counts[kind][i] += 1

        return hook

    for i, p in enumerate(params):
        handles.append(p.register_hook(counter("tensor", i)))
        handles.append(p.register_post_accumulate_grad_hook(counter("post", i)))
    optimizer = torch.optim.SGD(params, lr=LEARNING_RATE)
    history = []
    try:
        for _ in range(N_ITERS):
            optimizer.zero_grad(set_to_none=True)
            for key in counts:
                counts[key] = [0] * len(params)
            loss = (model(x) - y).square().mean()
            loss.backward()
            history.append({
                "grads": [None if p.grad is None else p.grad.detach().clone() for p in params],
                "tensor_hooks": list(counts["tensor"]),
                "post_hooks": list(counts["post"]),
            })
            optimizer.step()
    finally:
        for h in handles:
            h.remove()
    return {"history": history, "params": [p.detach().clone() for p in params]}


def worker(rank: int, init_method: str, configs: list[Config], out_dir: str) -> None:
    """Body of each spawned process: one gloo group, then every config under DDP on this rank's shard."""
    warnings.simplefilter("error")  # the house rule of the parent's pytest run, applied here too
    torch.set_num_threads(1)  # two processes share two cores
    # a bounded timeout: a collective that one process never joins fails the test instead of hanging CI
    dist.init_process_group(
        "gloo", init_method=init_method, rank=rank, world_size=WORLD_SIZE, timeout=datetime.timedelta(seconds=120)
    )
    try:
        x, y = data()
        shard = slice(rank * BATCH // WORLD_SIZE, (rank + 1) * BATCH // WORLD_SIZE)
        results = {}
        for config in configs:
            model = build_model(config)
            ddp = DistributedDataParallel(
                model, find_unused_parameters=config.find_unused_parameters, static_graph=config.static_graph
            )
            try:
                results[config.name] = train(ddp, list(model.parameters()), x[shard], y[shard])
            except RuntimeError as e:  # reported to the parent test, which decides whether it was expected
                results[config.name] = {"error": f"{type(e).__name__}: {e}"}
            dist.barrier()
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
