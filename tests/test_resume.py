"""Resumable ``ode-momentum fit`` runs (issue 8, item 5): a checkpoint after every epoch, written atomically,
and ``--resume DIR`` ending with exactly the metrics of an uninterrupted run.

Equality here is exact (``==`` on floats): a resumed run restores every state the remaining epochs read (weights,
AdamW moments and step counts, the cosine schedule, the batch-order generator, the global random states that
draw the dropout masks) and then performs the same deterministic CPU computation, one thread, in the same order.
Only ``train_seconds`` (wall time) and ``resumed_after_epochs`` (provenance) may differ.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ode_momentum import _runs
from ode_momentum._runs import DistributedEnvironmentError, atomic_write
from ode_momentum.cli import main
from ode_momentum.train import CHECKPOINT, GRADIENTS, FitConfig, fit, read_checkpoint, resumable, resume

# keys allowed to differ between a resumed and an uninterrupted run: wall time and the record of the restart
NOT_COMPUTED = {"train_seconds", "resumed_after_epochs"}
# small enough for about a second per fit; dropout on, so the global random state matters
TINY = dict(depth=3, width=16, batch_size=128, epochs=3, dropout=0.2)
TINY_ARGS = ["--depth", "3", "--width", "16", "--batch-size", "128", "--epochs", "3"]


def computed(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in NOT_COMPUTED}


def final_weights(out: Path) -> dict:
    return torch.load(out / "model.pt", weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def run_cli(*argv) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(["fit", *map(str, argv)])


class FailingSave:
    """``torch.save`` that, on call number ``fail_at``, writes half of the bytes and raises (a full disk, a
    crash mid-write); every other call is the real one."""

    def __init__(self, fail_at: int):
        self.real, self.fail_at, self.calls = torch.save, fail_at, 0

    def __call__(self, obj, f, *args, **kwargs):
        self.calls += 1
        if self.calls != self.fail_at:
            return self.real(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        self.real(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError("No space left on device (simulated)")


def interrupt_at_second_save(config: FitConfig) -> None:
    """Run ``config`` until its epoch-2 checkpoint fails half-written: the run stops with epoch 1 saved."""
    save = FailingSave(fail_at=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "save", save)
        with pytest.raises(OSError, match="simulated"):
            fit(config)
    assert save.calls == 2


# --- (a) a killed process resumes to the uninterrupted metrics ---------------------------------------------


def test_killed_run_resumes_to_the_metrics_of_an_uninterrupted_run(tmp_path):
    # the default model (depth 8, width 64, batch 64): ~0.2 s per epoch, so the 7 epochs left after the first
    # checkpoint leave a wide margin between seeing the checkpoint and the SIGKILL landing
    epochs = 8
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    command = [sys.executable, "-m", "ode_momentum.cli", "fit", "--epochs", str(epochs), "--out", str(killed)]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (killed / CHECKPOINT).exists():
            assert process.poll() is None, f"fit exited before its first checkpoint: {process.stderr.read()!r}"
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    checkpoint = read_checkpoint(killed)
    stopped_after = checkpoint["epoch"]
    assert not checkpoint["finished"] and 1 <= stopped_after < epochs, "the kill came too late to interrupt"
    assert not (killed / "metrics.json").exists()

    assert run_cli("--resume", killed) == 0
    assert run_cli("--epochs", epochs, "--out", reference) == 0
    resumed = json.loads((killed / "metrics.json").read_text())
    uninterrupted = json.loads((reference / "metrics.json").read_text())
    assert resumed["resumed_after_epochs"] == [stopped_after]
    assert uninterrupted["resumed_after_epochs"] == []
    assert computed(resumed) == computed(uninterrupted)  # every accuracy, loss and history entry, exactly
    assert_same_weights(killed, reference)
    assert read_checkpoint(killed)["finished"]


# --- (b) atomic writes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_a_save_failing_midway_keeps_the_previous_checkpoint_and_the_run_resumes_exactly(gradient, tmp_path):
    config = FitConfig(**TINY, gradient=gradient, out=tmp_path / "interrupted")
    interrupt_at_second_save(config)
    checkpoint = read_checkpoint(config.out)  # the epoch-1 checkpoint, whole
    assert checkpoint["epoch"] == 1 and not checkpoint["finished"]
    assert len(checkpoint["history"]) == 1
    assert sorted(p.name for p in config.out.iterdir()) == [CHECKPOINT]  # no half-written temporary left

    resumed = resume(config.out)
    uninterrupted = fit(FitConfig(**TINY, gradient=gradient, out=tmp_path / "reference"))
    assert resumed["resumed_after_epochs"] == [1]
    assert computed(resumed) == computed(uninterrupted)
    assert_same_weights(config.out, tmp_path / "reference")


def test_resume_removes_temporaries_left_by_a_kill_during_a_save(tmp_path):
    config = FitConfig(**TINY, out=tmp_path)
    interrupt_at_second_save(config)
    stale = tmp_path / f".{CHECKPOINT}.abc123.tmp"  # what a SIGKILL inside atomic_write leaves behind
    stale.write_bytes(b"half a checkpoint")
    resume(tmp_path)
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [CHECKPOINT, "metrics.json", "model.pt", "curves.png"]
    )


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "file.bin"
    atomic_write(path, lambda f: f.write(b"old"))

    def half_then_fail(f):
        f.write(b"ne")
        raise KeyboardInterrupt  # any exception, even one that is not an Exception

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [path]
    atomic_write(path, lambda f: f.write("new"), mode="w")
    assert path.read_text() == "new"
    mask = os.umask(0o022)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # the permissions of a plainly created file


def test_checkpoint_holds_every_state_and_loads_with_weights_only(tmp_path):
    fit(FitConfig(**TINY, out=tmp_path))
    checkpoint = read_checkpoint(tmp_path)  # torch.load(weights_only=True) inside
    assert {"model", "optimizer", "scheduler", "batch_generator", "rng", "history", "config", "epoch",
            "finished", "world_size", "train_seconds"} <= checkpoint.keys()
    assert checkpoint["finished"] and checkpoint["epoch"] == TINY["epochs"] and checkpoint["world_size"] == 1
    assert FitConfig(**checkpoint["config"]) == FitConfig(**TINY, out=tmp_path)
    (states,) = checkpoint["rng"]  # one process
    assert {"torch", "cuda", "numpy", "python"} <= states.keys()
    assert states["cuda"] == []  # a CPU run never touches CUDA
    assert checkpoint["scheduler"]["last_epoch"] == TINY["epochs"] * 12  # 1437 / 128 -> 12 steps per epoch
    assert len(checkpoint["history"]) == TINY["epochs"]


def test_fit_forks_numpy_and_python_random_states(tmp_path):
    # fit forks numpy's and Python's generators like torch's: the caller's streams are untouched, and the
    # checkpoint's states are the run's own, seeded from config.seed (0; nothing in the fit draws from numpy)
    import random

    import numpy as np

    np.random.seed(123)
    random.seed(123)
    fit(FitConfig(**TINY, out=tmp_path))
    assert np.random.randint(1 << 30) == np.random.RandomState(123).randint(1 << 30)
    assert random.random() == random.Random(123).random()
    states = read_checkpoint(tmp_path)["rng"][0]
    fresh = np.random.RandomState(0)
    assert torch.equal(states["numpy"]["keys"], torch.from_numpy(fresh.get_state()[1].astype("int64")))


# --- (c) errors ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished run and an interrupted one (epoch 1 of 3 saved), gamma 0.8 (not the default) for both."""
    root = tmp_path_factory.mktemp("runs")
    finished = FitConfig(**TINY, gamma=0.8, out=root / "finished")
    fit(finished)
    interrupted = FitConfig(**TINY, gamma=0.8, out=root / "interrupted")
    interrupt_at_second_save(interrupted)
    return finished.out, interrupted.out


def cli_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *map(str, argv)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("usage: ode-momentum fit")
    return err.splitlines()[-1]


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        # explicit options that disagree with the stored run, including a default value (--gamma 0.9)
        (["--gamma", "0.9"], r"--gamma = 0\.9 \(the run has 0\.8\)\. Leave it out to resume"),
        (["--depth", "5", "--seed", "1"], r"--depth = 5 \(the run has 3\); --seed = 1 \(the run has 0\)"),
        (["--gradient", "exact"], r"--gradient = 'exact' \(the run has 'auto'\)"),
        (["--out", "elsewhere"], r"continues the run in .* and writes there; drop --out"),
        (["--compare"], r"a --compare run is two: resume OUT/momentum and OUT/resnet"),
        (["--arch", "resnet18"], r"--resume applies to the MLP classifier only"),
        (["--distributed"], r"--distributed = True \(the run has False\)"),
    ],
)
def test_resume_rejects_settings_that_would_change_the_run(runs, argv, match, capsys):
    _, interrupted = runs
    before = (interrupted / CHECKPOINT).read_bytes()
    message = cli_error(capsys, "--resume", interrupted, *argv)
    assert re.search(match, message), message
    assert (interrupted / CHECKPOINT).read_bytes() == before  # nothing ran
    assert not (interrupted / "metrics.json").exists()


def test_resume_accepts_repeated_settings_and_a_new_thread_count(runs, tmp_path):
    _, interrupted = runs
    config, checkpoint = resumable(interrupted, gamma=0.8, depth=3, gradient="auto", threads=2)
    assert config.threads == 2 and config.gamma == 0.8 and checkpoint["epoch"] == 1


def test_resume_of_a_finished_run_says_there_is_nothing_to_do(runs, capsys):
    finished, _ = runs
    message = cli_error(capsys, "--resume", finished)
    assert "holds a finished run (3 of 3 epochs" in message
    assert "nothing to resume" in message and "start a new run with more --epochs" in message


def test_resume_without_a_checkpoint_says_to_start_afresh(tmp_path, capsys):
    message = cli_error(capsys, "--resume", tmp_path)
    assert f"holds no {CHECKPOINT}" in message and "start it afresh" in message
    message = cli_error(capsys, "--resume", tmp_path / "missing")
    assert "no such folder" in message


def test_resume_rejects_files_that_are_not_fit_checkpoints(runs, tmp_path, capsys):
    finished, _ = runs
    (tmp_path / CHECKPOINT).write_bytes(b"\x00garbage")
    assert "it cannot be read" in cli_error(capsys, "--resume", tmp_path)
    (tmp_path / CHECKPOINT).write_bytes((finished / "model.pt").read_bytes())  # a real torch file, not ours
    assert "is not a checkpoint of `ode-momentum fit`" in cli_error(capsys, "--resume", tmp_path)


def test_resume_library_errors_name_the_setting(runs):
    _, interrupted = runs
    with pytest.raises(TypeError, match="unknown setting\\(s\\) 'out'"):
        resumable(interrupted, out="x")
    with pytest.raises(TypeError, match="unknown setting\\(s\\) 'colour'"):
        resumable(interrupted, colour="red")
    with pytest.raises(ValueError, match="`lr` = 1.0 \\(the run has 0.003\\)"):
        resumable(interrupted, lr=1.0)
    with pytest.raises(ValueError, match="`threads` must be >= 1.*while resuming"):
        resumable(interrupted, threads=0)


def test_distributed_run_resumes_only_with_as_many_processes(runs, tmp_path, monkeypatch):
    _, interrupted = runs
    checkpoint = read_checkpoint(interrupted)
    checkpoint["config"]["distributed"] = True
    checkpoint["world_size"] = 2
    checkpoint["rng"] = checkpoint["rng"] * 2
    torch.save(checkpoint, tmp_path / CHECKPOINT)
    with pytest.raises(DistributedEnvironmentError, match="not set"):
        resumable(tmp_path)  # no torchrun environment at all
    for name, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT="29500").items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="trained by 2 process\\(es\\); this launch has 1.*--nproc_per_node 2"):
        resumable(tmp_path)


def test_distributed_fit_needs_torchrun(tmp_path, monkeypatch, capsys):
    for name in _runs.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(DistributedEnvironmentError, match="RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT "
                                                          "are not set.*torchrun --nproc_per_node 2"):
        fit(FitConfig(**TINY, distributed=True, out=tmp_path))
    message = cli_error(capsys, *TINY_ARGS, "--distributed", "--out", tmp_path)
    assert "--distributed needs the environment torchrun gives" in message and "or drop --distributed" in message
    monkeypatch.setenv("RANK", "two")
    for name in ("WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(name, "1")
    message = cli_error(capsys, *TINY_ARGS, "--distributed", "--out", tmp_path)
    assert "RANK, WORLD_SIZE and LOCAL_RANK must be integers; got RANK='two'" in message
    assert not any(tmp_path.iterdir())
    with pytest.raises(TypeError, match="`distributed` must be True or False; got 'yes'"):
        FitConfig(distributed="yes")
