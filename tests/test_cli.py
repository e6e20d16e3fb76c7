"""The fit loop (``ode_momentum.train``) and the command line (``ode_momentum.cli``)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys

import pytest
import torch

from ode_momentum.cli import format_table, main
from ode_momentum.data import load_digits
from ode_momentum.train import GRADIENTS, FitConfig, build_model, fit, load_model

# a run that takes a second or two: enough to exercise every output, not to learn much
QUICK = ["--epochs", "2", "--depth", "3", "--width", "16", "--batch-size", "128"]
METRIC_KEYS = {
    "test_accuracy", "train_accuracy", "activation_bytes", "train_seconds", "n_parameters", "model",
    "gradient", "depth", "gamma", "epochs", "seed", "history",
}
HISTORY_KEYS = {"epoch", "loss", "train_accuracy", "test_accuracy"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# the default configuration measured 98.1-98.9% on seeds 0-7; the issue asks for at least 97%
DEFAULT_MIN_ACCURACY = 0.97


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick ``ode-momentum fit`` of the default model; returns its output directory and stdout."""
    out = tmp_path_factory.mktemp("fit")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["fit", *QUICK, "--out", str(out)])
    assert code == 0
    return out, stdout.getvalue()


def test_fit_writes_metrics_with_every_key(quick_run):
    out, _ = quick_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= metrics.keys()
    assert (metrics["model"], metrics["gradient"], metrics["depth"], metrics["epochs"]) == (
        "momentum", "auto", 3, 2,
    )
    assert len(metrics["history"]) == 2
    assert all(HISTORY_KEYS <= record.keys() for record in metrics["history"])
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    # auto takes exact for the ReLU residuals: X_N, V_N (int64) and the bit buffer's word, int8 at 3 layers,
    # of one batch of 128 x 16, whatever the depth
    assert metrics["activation_bytes"] == 128 * 16 * (2 * 8 + 1)


def test_fit_checkpoint_reloads_with_the_same_predictions(quick_run):
    out, _ = quick_run
    metrics = json.loads((out / "metrics.json").read_text())
    checkpoint = torch.load(out / "model.pt", weights_only=True)
    config = FitConfig(**checkpoint["config"])
    data = load_digits(seed=config.seed)
    model = build_model(config, data.n_features, data.n_classes)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    with torch.no_grad():
        logits = model(data.X_test)
    accuracy = int((logits.argmax(1) == data.y_test).sum()) / len(data.y_test)
    assert accuracy == metrics["test_accuracy"]
    assert float(torch.nn.functional.cross_entropy(logits, data.y_test)) == pytest.approx(metrics["test_loss"])

    again, again_config = load_model(out / "model.pt")
    assert again_config == config
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(data.X_test), logits, rtol=0, atol=0)


def test_fit_draws_png_curves(quick_run):
    out, _ = quick_run
    assert (out / "curves.png").read_bytes()[:8] == PNG_SIGNATURE


def test_fit_prints_an_aligned_table(quick_run):
    _, stdout = quick_run
    lines = stdout.splitlines()
    header, row = lines[0], lines[1]
    assert header.split()[:3] == ["model", "gradient", "depth"]
    assert row.split()[:3] == ["momentum", "auto", "3"]
    # the columns line up: every right-aligned number ends where its header ends
    assert header.index("params") + len("params") == len(row)


@pytest.mark.parametrize("model", ["resnet", "node"])
def test_fit_first_order_models(model, tmp_path, capsys):
    assert main(["fit", *QUICK, "--model", model, "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (metrics["model"], metrics["gradient"], metrics["gamma"]) == (model, "backprop", 0.0)
    assert capsys.readouterr().out.splitlines()[1].split()[:2] == [model, "backprop"]


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_fit_momentum_with_every_gradient_mode(gradient, tmp_path, capsys):
    assert main(["fit", *QUICK, "--gradient", gradient, "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["gradient"] == gradient
    assert metrics["history"][-1]["loss"] < metrics["history"][0]["loss"]  # it learns something


def test_fit_compare_trains_both_models_side_by_side(tmp_path, capsys):
    assert main(["fit", *QUICK, "--compare", "--out", str(tmp_path)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:3]]
    assert [row[:2] for row in rows] == [["momentum", "auto"], ["resnet", "backprop"]]
    momentum = json.loads((tmp_path / "momentum" / "metrics.json").read_text())
    resnet = json.loads((tmp_path / "resnet" / "metrics.json").read_text())
    assert momentum["n_parameters"] == resnet["n_parameters"]
    # backprop stores activations of every layer; the reversible stack does not
    assert resnet["activation_bytes"] > momentum["activation_bytes"]


def test_fit_is_deterministic_and_restores_global_state(tmp_path):
    config = FitConfig(epochs=1, depth=2, width=8, batch_size=256, out=tmp_path / "a", threads=1)
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    first = fit(config)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.get_num_threads() == threads
    second = fit(FitConfig(**{**config.to_dict(), "out": tmp_path / "b"}))
    assert first["history"] == second["history"]


def test_fit_progress_bar_does_not_need_a_terminal(tmp_path, capsys):
    fit(FitConfig(epochs=2, depth=2, width=8, batch_size=256, out=tmp_path, progress=True))
    assert "loss=" in capsys.readouterr().err  # tqdm's postfix


def test_format_table_aligns_columns():
    row = {"model": "resnet", "gradient": "backprop", "depth": 128, "test_accuracy": 0.98,
           "activation_bytes": 2048, "train_seconds": 1.25, "n_parameters": 1234567}
    lines = format_table([row, {**row, "model": "momentum", "depth": 8}]).splitlines()
    assert len({len(line) for line in lines}) == 1
    assert lines[1].split() == ["resnet", "backprop", "128", "0.9800", "2.0", "1.2", "1,234,567"]


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--depth", "0"], "--depth must be >= 1; got 0"),
        (["--depth", "two"], "argument --depth: invalid int value: 'two'"),
        (["--model", "transformer"], "argument --model: invalid choice: 'transformer'"),
        (["--gamma", "1.5"], "--gamma must lie in \\[0, 1\\]; got 1.5"),
        (["--gamma", "0"], "--gamma = 0 cannot be reversed"),
        (["--model", "resnet", "--gradient", "reversible"], "--gradient = 'reversible' needs model 'momentum'"),
        (["--lr", "-1"], "--lr must be > 0"),
        (["--dropout", "1"], "--dropout must lie in \\[0, 1\\)"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--model", "node", "--compare"], "argument --compare: not allowed with argument --model"),
    ],
)
def test_cli_rejects_bad_options_with_a_message(argv, match, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *argv, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("usage: ode-momentum fit")
    assert re.search(match, err), err
    assert not (tmp_path / "metrics.json").exists()


def test_cli_needs_a_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"model": "mlp"}, ValueError, "`model` must be one of \\['momentum', 'resnet', 'node'\\]"),
        ({"gradient": "adjoint"}, ValueError, "`gradient` must be one of \\[.*'reversible'.*\\]; got 'adjoint'"),
        ({"model": "node", "gradient": "exact"}, ValueError, "`gradient` = 'exact' needs model 'momentum'"),
        ({"depth": 2.5}, TypeError, "`depth` must be a positive int"),
        ({"weight_decay": -1.0}, ValueError, "`weight_decay` must be >= 0"),
        ({"threads": 0}, ValueError, "`threads` must be >= 1"),
        ({"out": 3}, TypeError, "`out` must be a path"),
        ({"progress": "yes"}, TypeError, "`progress` must be True, False or None"),
        ({"seed": -1}, ValueError, "`seed` must be >= 0"),
    ],
)
def test_fit_config_rejects_bad_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        FitConfig(**kwargs)


def test_build_model_rejects_a_dict_config():
    with pytest.raises(TypeError, match="`config` must be a FitConfig; got dict"):
        build_model({"model": "momentum"}, 64, 10)


@pytest.mark.slow
def test_console_script_runs_without_stdin_or_terminal(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ode_momentum.cli", "fit", *QUICK, "--out", str(tmp_path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split()[0] == "momentum"
    assert result.stderr == ""  # no progress bar without a terminal, and no warnings


@pytest.mark.slow
def test_default_configuration_reaches_97_percent(tmp_path):
    metrics = fit(FitConfig(out=tmp_path))
    assert metrics["test_accuracy"] >= DEFAULT_MIN_ACCURACY
