"""The local CIFAR loader (``ode_momentum.data.cifar``) on tiny synthetic sets in the exact standard layout,
and ``ode-momentum fit --arch`` on them."""

from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest
import torch

from ode_momentum.cli import main
from ode_momentum.data import ImageSplit, load_cifar
from ode_momentum.train_images import ImageFitConfig

N_PER_BATCH = 6  # images per synthetic file (the real files hold 10,000)


def _dump(path, obj):
    """Pickle ``obj`` as the CIFAR files are: protocol 2, bytes keys, numpy 1.x module names."""
    data = pickle.dumps(obj, protocol=2)
    data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")  # as written by numpy 1.x
    path.write_bytes(data)


def _images(rng, n):
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_cifar10(root, seed=0):
    """``root/cifar-10-batches-py`` with data_batch_1..5, test_batch, batches.meta; returns the arrays."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data, labels = _images(rng, N_PER_BATCH), rng.integers(0, 10, N_PER_BATCH).tolist()
        _dump(folder / name, {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                              b"filenames": [b"x.png"] * N_PER_BATCH})
        arrays[name] = (data, labels)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump(folder / "batches.meta", {b"num_cases_per_batch": N_PER_BATCH, b"label_names": names, b"num_vis": 3072})
    return folder, arrays


def write_cifar100(root, seed=0):
    """``root/cifar-100-python`` with train, test, meta."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name, n in (("train", 2 * N_PER_BATCH), ("test", N_PER_BATCH)):
        _dump(folder / name, {b"filenames": [b"x.png"] * n, b"batch_label": name.encode(),
                              b"fine_labels": rng.integers(0, 100, n).tolist(),
                              b"coarse_labels": rng.integers(0, 20, n).tolist(), b"data": _images(rng, n)})
    _dump(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                            b"coarse_label_names": [f"c{i}".encode() for i in range(20)]})
    return folder


def test_cifar10_layout_pixels_labels_and_statistics(tmp_path):
    folder, arrays = write_cifar10(tmp_path)
    for where in (tmp_path, folder):  # the folder itself or its parent
        data = load_cifar(where)
        assert isinstance(data, ImageSplit)
        assert data.X_train.shape == (5 * N_PER_BATCH, 3, 32, 32) and data.X_train.dtype == torch.uint8
        assert data.X_test.shape == (N_PER_BATCH, 3, 32, 32)
        assert data.n_classes == 10 and data.classes[0] == "airplane" and data.name == "cifar10"
    raw, labels = arrays["data_batch_2"]
    # image 0 of batch 2: red plane = the first 1024 bytes, row-major; green and blue follow
    first = data.X_train[N_PER_BATCH]
    assert torch.equal(first[0].flatten(), torch.from_numpy(raw[0, :1024]))
    assert torch.equal(first[2, 3], torch.from_numpy(raw[0, 2048 + 3 * 32: 2048 + 4 * 32]))
    assert data.y_train[N_PER_BATCH:2 * N_PER_BATCH].tolist() == labels
    assert data.y_train.dtype == torch.int64
    all_train = np.concatenate([arrays[f"data_batch_{i}"][0] for i in range(1, 6)]).reshape(-1, 3, 1024) / 255.0
    torch.testing.assert_close(data.mean, torch.tensor(all_train.mean(axis=(0, 2)), dtype=torch.float32))
    normalised = data.normalise(data.X_train).to(torch.float64)
    torch.testing.assert_close(normalised.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("labels", "n_classes"), [("fine", 100), ("coarse", 20)])
def test_cifar100_fine_and_coarse_labels(tmp_path, labels, n_classes):
    write_cifar100(tmp_path)
    data = load_cifar(tmp_path, "cifar100", labels=labels)
    assert data.n_classes == n_classes and len(data.classes) == n_classes
    assert data.X_train.shape == (2 * N_PER_BATCH, 3, 32, 32) and data.X_test.shape == (N_PER_BATCH, 3, 32, 32)
    assert int(data.y_train.max()) < n_classes


def test_missing_files_are_named(tmp_path):
    folder, _ = write_cifar10(tmp_path)
    (folder / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match=r"'data_batch_4'.*Nothing is downloaded"):
        load_cifar(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"\['train', 'test', 'meta'\]"):
        load_cifar(tmp_path, "cifar100")


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    folder, _ = write_cifar10(tmp_path)

    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Exploit()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load (__builtin__|builtins)\.print"):
        load_cifar(tmp_path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"`data` must be a uint8 array of shape \(n, 3072\)"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, r"`labels` must hold one integer label per image"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"labels must lie in 0..9; got 0..10"),
        ({b"labels": [0, 1]}, r"missing the key 'data'"),
    ],
)
def test_malformed_files_are_named(tmp_path, content, match):
    folder, _ = write_cifar10(tmp_path)
    _dump(folder / "test_batch", content)
    with pytest.raises(ValueError, match=r"test_batch: " + match):
        load_cifar(tmp_path)


def test_loader_argument_errors(tmp_path):
    with pytest.raises(ValueError, match=r"`name` must be one of \['cifar10', 'cifar100'\]"):
        load_cifar(tmp_path, "cifar20")
    with pytest.raises(ValueError, match=r"`labels` must be one of \['fine', 'coarse'\]"):
        load_cifar(tmp_path, "cifar100", labels="medium")
    with pytest.raises(TypeError, match=r"`data_dir` must be a path"):
        load_cifar(3)


def test_fit_arch_on_cifar_from_a_local_copy(tmp_path, capsys):
    write_cifar10(tmp_path / "data")
    out = tmp_path / "run"
    argv = ["fit", "--arch", "resnet18", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--epochs",
            "2", "--width", "4", "--batch-size", "8", "--out", str(out)]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # the paper's recipe is the CIFAR default: SGD, momentum 0.9, weight decay 5e-4, step schedule, crop+flip
    assert (metrics["optimizer"], metrics["sgd_momentum"], metrics["weight_decay"], metrics["augment"]) == (
        "sgd", 0.9, 5e-4, "crop+flip"
    )
    assert (metrics["crop_padding"], metrics["lr"], metrics["milestones"]) == (4, 0.1, [0.5, 0.75])
    assert [r["lr"] for r in metrics["history"]] == [0.1, pytest.approx(0.01)]  # divided after epoch 1 of 2
    assert (metrics["n_train"], metrics["n_test"], metrics["gradient"]) == (30, 6, "exact")
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[:4] == ["momentum", "exact", "resnet18", "cifar10"]


def test_paper_recipe_defaults_for_cifar(tmp_path):
    config = ImageFitConfig(dataset="cifar100", data_dir=tmp_path)
    assert (config.epochs, config.batch_size, config.width, config.lr, config.image_size) == (220, 128, 64, 0.1, 32)


def test_fit_arch_without_the_files_exits_with_their_names(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--arch", "resnet18", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--out",
              str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.search(r"data_batch_1.*test_batch.*batches\.meta", err), err
    with pytest.raises(SystemExit):
        main(["fit", "--arch", "resnet18", "--dataset", "cifar10", "--out", str(tmp_path / "run")])
    assert "--data-dir is required for cifar10" in capsys.readouterr().err
