"""DistributedDataParallel in every gradient mode (issue 8, item 1), and ``ode-momentum fit --distributed``.

Two processes (``torch.multiprocessing.spawn``, gloo backend, CPU) each train on half of a batch; their
averaged gradients must equal one process's on the full batch, and every parameter's gradient hooks must
fire exactly once per backward. The memory-free modes return a gradient (zeros if unused) for every
trainable parameter from one autograd Function, which is what lets DDP run with
``find_unused_parameters=False`` even when a block leaves a parameter unused.

One spawn serves every configuration (the processes, their ``import torch`` and the gloo group cost
seconds); the parametrised tests only read its results and compute their single-process references.

The command-line tests launch ``python -m torch.distributed.run --nproc_per_node 2 -m ode_momentum.cli fit
--distributed`` (what ``torchrun`` runs) on the digits: a complete run, and a run stopped after its first
checkpoint and resumed, which must end exactly where the complete one does.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import _ddp_worker as ddp
from _ddp_worker import Config

pytestmark = [
    pytest.mark.slow,  # spawning two processes that import torch: about 10 s on two shared cores
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
    ),
]

# Issue 8: DDP's average of the shard gradients equals the full-batch gradient to 1e-6 relative. The model
# runs in float64, where the only difference is the order of the batch sums (measured: below 2e-15).
GRAD_RTOL = 1e-6

MODES = list(ddp.MODE_OPTIONS)
CONFIGS = (
    [Config(mode, unused=False) for mode in MODES]
    # backprop never reaches an unused parameter, so DDP needs find_unused_parameters=True there (PyTorch's
    # rule); the memory-free modes return zeros for it and run with find_unused_parameters=False
    + [Config(mode, unused=True, find_unused_parameters=mode == "backprop") for mode in MODES]
    + [Config(mode, unused=True, static_graph=True) for mode in MODES]
)
# The control: plain autograd with an unused parameter and find_unused_parameters=False must trip DDP's
# reducer, or the `unused` configurations would not be testing what they claim to.
CONTROL = Config("backprop", unused=True, find_unused_parameters=False)
UNUSED_NAME = "stack.functions.1.unused"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def per_rank(tmp_path_factory):
    """The results of both processes, keyed by configuration name (one spawn for the whole module)."""
    out = tmp_path_factory.mktemp("ddp")
    init_method = f"tcp://127.0.0.1:{_free_port()}"
    mp.spawn(ddp.worker, args=(init_method, CONFIGS + [CONTROL], str(out)), nprocs=ddp.WORLD_SIZE, join=True)
    return [torch.load(out / f"rank{rank}.pt") for rank in range(ddp.WORLD_SIZE)]


def reference(config: Config) -> tuple[list[str], dict]:
    """One process, no DDP, the full batch, the same model and steps."""
    model = ddp.build_model(config)
    names = [name for name, _ in model.named_parameters()]
    x, y = ddp.data()
    return names, ddp.train(model, list(model.parameters()), x, y)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """Max-norm relative error; exact agreement is required where the reference is all zeros."""
    scale = float(want.abs().max())
    err = float((got - want).abs().max())
    return err / scale if scale > 0 else err


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_ddp_gradients_equal_full_batch_and_hooks_fire_once(per_rank, config):
    names, ref = reference(config)
    runs = [results[config.name] for results in per_rank]
    for rank, run in enumerate(runs):
        assert "error" not in run, f"rank {rank}: {run.get('error')}"
    unused_ok = config.mode != "backprop"  # the memory-free modes return zeros for an unused parameter
    expected_hooks = [0 if name == UNUSED_NAME and not unused_ok else 1 for name in names]
    assert len(ref["history"]) == ddp.N_ITERS
    for it, want in enumerate(ref["history"]):
        assert want["tensor_hooks"] == want["post_hooks"] == expected_hooks  # the reference itself
        for rank, run in enumerate(runs):
            got = run["history"][it]
            where = f"iteration {it}, rank {rank}"
            assert got["tensor_hooks"] == expected_hooks, f"{where}: tensor hooks per parameter"
            assert got["post_hooks"] == expected_hooks, f"{where}: post-accumulate hooks per parameter"
            for name, g, w in zip(names, got["grads"], want["grads"], strict=True):
                if w is None:
                    assert g is None, f"{where}: {name} got a gradient the reference has not"
                    continue
                assert g is not None, f"{where}: {name} has no gradient"
                assert rel_err(g, w) <= GRAD_RTOL, f"{where}: {name} relative error {rel_err(g, w):.3g}"
            if config.unused and unused_ok:
                assert not got["grads"][names.index(UNUSED_NAME)].any()  # zeros, never None
    # after the all-reduce both processes hold the same gradients and take the same steps
    for it in range(ddp.N_ITERS):
        for a, b in zip(runs[0]["history"][it]["grads"], runs[1]["history"][it]["grads"], strict=True):
            assert (a is None and b is None) or torch.equal(a, b)
    for a, b, w in zip(runs[0]["params"], runs[1]["params"], ref["params"], strict=True):
        assert torch.equal(a, b)
        assert rel_err(a, w) <= GRAD_RTOL


def test_control_backprop_with_an_unused_parameter_trips_ddp_without_find_unused_parameters(per_rank):
    for results in per_rank:
        error = results[CONTROL.name].get("error", "")
        assert "Expected to have finished reduction in the prior iteration" in error, error


# --- ode-momentum fit --distributed under torchrun ----------------------------------------------------------

# the default model (depth 8, width 64), 64 per batch and process: ~0.15 s per epoch, so the epochs left after
# the first checkpoint leave a margin for stopping the run
FIT_ARGS = ["--epochs", "6", "--seed", "3"]
RUN_FILES = {"metrics.json", "model.pt", "curves.png", "checkpoint.pt"}


def torchrun(*fit_args, wait: bool = True):
    """``torchrun --standalone --nproc_per_node 2 -m ode_momentum.cli fit --distributed ...`` (gloo on the CPU).

    Warnings are errors in the processes too (the suite's rule). Returns the finished ``CompletedProcess``, or
    the running ``Popen`` with ``wait=False``.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "ode_momentum.cli", "fit", "--distributed", *map(str, fit_args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "error", "CUDA_VISIBLE_DEVICES": ""}
    if not wait:
        return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def complete_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("torchrun") / "complete"
    result = torchrun(*FIT_ARGS, "--out", out)
    assert result.returncode == 0, result.stderr
    return out, result


def test_torchrun_fit_trains_every_shard_and_only_rank_0_writes(complete_run):
    out, result = complete_run
    assert {p.name for p in out.iterdir()} == RUN_FILES  # no per-rank files, no temporaries
    assert result.stdout.count("wrote metrics.json") == 1  # rank 1 prints nothing
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and len(metrics["history"]) == 6
    assert metrics["history"][-1]["loss"] < metrics["history"][0]["loss"]  # it learns
    assert metrics["test_accuracy"] > 0.8  # ten classes: chance is 0.1
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["finished"] and checkpoint["world_size"] == 2 and checkpoint["config"]["distributed"]
    # each process's random state is kept: dropout draws from seed + rank, so they differ
    first, second = (states["torch"] for states in checkpoint["rng"])
    assert not torch.equal(first, second)


def test_torchrun_fit_stopped_after_a_checkpoint_resumes_to_the_complete_run(complete_run, tmp_path):
    reference, _ = complete_run
    out = tmp_path / "stopped"
    process = torchrun(*FIT_ARGS, "--out", out, wait=False)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.pt").exists():
            assert process.poll() is None, f"torchrun exited before the first checkpoint: {process.stderr.read()}"
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.002)
        # what a cluster scheduler sends: torchrun passes it on to both workers and waits for them to exit
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    assert process.returncode != 0
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert not checkpoint["finished"] and checkpoint["epoch"] < 6, "the stop came too late to interrupt"

    result = torchrun("--resume", out)
    assert result.returncode == 0, result.stderr
    resumed = json.loads((out / "metrics.json").read_text())
    complete = json.loads((reference / "metrics.json").read_text())
    assert resumed["resumed_after_epochs"] == [checkpoint["epoch"]]
    # same deterministic CPU computation in both processes from the restored states: exact equality
    skip = {"train_seconds", "resumed_after_epochs"}
    assert {k: v for k, v in resumed.items() if k not in skip} == {k: v for k, v in complete.items() if k not in skip}
    weights = [torch.load(d / "model.pt", weights_only=True)["state_dict"] for d in (out, reference)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])
