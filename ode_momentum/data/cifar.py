"""CIFAR-10 and CIFAR-100 from a local copy in the standard python pickle layout (nothing is downloaded).

The layouts, as distributed at https://www.cs.toronto.edu/~kriz/cifar.html (``cifar-10-python.tar.gz``,
``cifar-100-python.tar.gz``):

- CIFAR-10, folder ``cifar-10-batches-py``: ``data_batch_1`` .. ``data_batch_5`` (10,000 images each),
  ``test_batch`` (10,000), ``batches.meta`` (``label_names``).
- CIFAR-100, folder ``cifar-100-python``: ``train`` (50,000), ``test`` (10,000), ``meta``
  (``fine_label_names``, ``coarse_label_names``).

Each file is a pickled dict (written by Python 2, so its keys load as bytes) with ``data``, a uint8 array of
shape ``(n, 3072)`` holding each image's red, green and blue 32x32 planes in row-major order, and the labels
(``labels`` for CIFAR-10, ``fine_labels`` and ``coarse_labels`` for CIFAR-100). The files are read with an
unpickler that only rebuilds numpy arrays, lists, dicts and strings, so a tampered file cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from .._checks import check_choice
from .images import ImageSplit

DATASETS = ("cifar10", "cifar100")

_LAYOUT = {
    # name -> (folder of the extracted archive, train files, test file, meta file, label-names key)
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
        "label_names",
    ),
    "cifar100": ("cifar-100-python", ("train",), "test", "meta", "fine_label_names"),
}
_ARCHIVES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}
_N_CLASSES = {"cifar10": 10, ("cifar100", "fine"): 100, ("cifar100", "coarse"): 20}


def load_cifar(data_dir, name: str = "cifar10", *, labels: str = "fine") -> ImageSplit:
    """Load CIFAR-10 or CIFAR-100 from ``data_dir`` (standard python pickle layout; nothing is downloaded).

    Parameters
    ----------
    data_dir : str or path
        The extracted archive's folder (``cifar-10-batches-py`` or ``cifar-100-python``), or a folder that
        contains it.
    name : {"cifar10", "cifar100"}
    labels : {"fine", "coarse"}
        CIFAR-100 only: the 100 fine classes or the 20 superclasses.

    Returns
    -------
    ImageSplit
        ``X_*`` uint8 of shape ``(n, 3, 32, 32)`` (50,000 train and 10,000 test images for the full sets),
        ``y_*`` int64, ``scale = 255``, per-channel ``mean`` / ``std`` of the train images (in [0, 1] units),
        the class names.

    Raises
    ------
    FileNotFoundError
        If a file of the layout is missing; the message names every expected file and both places looked in.
    ValueError
        For an unknown ``name`` or ``labels``, or a file whose content is not the CIFAR layout (wrong keys,
        shapes, dtype or labels out of range); the message names the file.
    pickle.UnpicklingError
        If a file is not a pickle, or asks to build anything other than plain data and numpy arrays.

    References
    ----------
    Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", tech. report, 2009.
    """
    check_choice("name", name, DATASETS)
    check_choice("labels", labels, ("fine", "coarse"))
    folder_name, train_files, test_file, meta_file, names_key = _LAYOUT[name]
    folder = _find_folder(data_dir, name)
    label_key = "labels" if name == "cifar10" else f"{labels}_labels"
    if name == "cifar100":
        names_key = f"{labels}_label_names"
    n_classes = _N_CLASSES[name if name == "cifar10" else (name, labels)]

    meta = _read(folder / meta_file)
    class_names = _field(meta, names_key, folder / meta_file)
    if not isinstance(class_names, (list, tuple)) or len(class_names) != n_classes:
        raise ValueError(
            f"{folder / meta_file}: `{names_key}` must list {n_classes} class names; got "
            f"{len(class_names) if isinstance(class_names, (list, tuple)) else type(class_names).__name__}."
        )
    classes = tuple(c.decode() if isinstance(c, bytes) else str(c) for c in class_names)

    parts = [_batch(folder / f, label_key, n_classes) for f in train_files]
    X_train = torch.cat([x for x, _ in parts])
    y_train = torch.cat([y for _, y in parts])
    X_test, y_test = _batch(folder / test_file, label_key, n_classes)
    scaled = X_train.to(torch.float64) / 255.0  # (n, 3, 32, 32)
    mean = scaled.mean(dim=(0, 2, 3))
    std = scaled.std(dim=(0, 2, 3))
    return ImageSplit(
        X_train, y_train, X_test, y_test, n_classes=n_classes, mean=mean.to(torch.float32),
        std=std.to(torch.float32), scale=255.0, classes=classes, name=name,
    )


def _find_folder(data_dir, name: str) -> Path:
    if not isinstance(data_dir, (str, Path)):
        raise TypeError(f"`data_dir` must be a path (str or pathlib.Path); got {type(data_dir).__name__}.")
    folder_name, train_files, test_file, meta_file, _ = _LAYOUT[name]
    expected = (*train_files, test_file, meta_file)
    root = Path(data_dir)
    candidates = [root, root / folder_name]
    for folder in candidates:
        if all((folder / f).is_file() for f in expected):
            return folder
    missing = [f for f in expected if not (candidates[0] / f).is_file()]
    raise FileNotFoundError(
        f"{name} not found under {str(root)!r}: expected the files {list(expected)} of the python version "
        f"({folder_name}/ in {_ARCHIVES[name]}) "
        f"either in {str(candidates[0])!r} or in {str(candidates[1])!r}; missing in the first: {missing}. "
        "Nothing is downloaded: fetch the archive from https://www.cs.toronto.edu/~kriz/cifar.html, extract it, "
        "and pass the folder as --data-dir."
    )


class _DataUnpickler(pickle.Unpickler):
    """Rebuilds plain data and numpy arrays only (the CIFAR files contain nothing else)."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes in protocol 2
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module, name):
        if module.startswith("numpy.core.") and hasattr(np, "_core"):  # files written by numpy 1.x (or Python 2)
            module = "numpy._core." + module[len("numpy.core."):]
        elif module.startswith("numpy._core.") and not hasattr(np, "_core"):  # written by numpy 2, read by 1.x
            module = "numpy.core." + module[len("numpy._core."):]
        if (module.replace("numpy.core.", "numpy._core."), name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} from a CIFAR file: only plain data and numpy arrays are allowed."
            )
        return super().find_class(module, name)


def _read(path: Path) -> dict:
    with open(path, "rb") as f:
        obj = _DataUnpickler(f, encoding="bytes").load()
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict (the CIFAR python layout); got {type(obj).__name__}.")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _field(d: dict, key: str, path: Path):
    if key not in d:
        raise ValueError(f"{path}: missing the key {key!r} of the CIFAR python layout; found {sorted(d)}.")
    return d[key]


def _batch(path: Path, label_key: str, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    d = _read(path)
    data = np.asarray(_field(d, "data", path))
    labels = np.asarray(_field(d, label_key, path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(
            f"{path}: `data` must be a uint8 array of shape (n, 3072); got {data.dtype} of shape {data.shape}."
        )
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path}: `{label_key}` must hold one integer label per image ({data.shape[0]}); got "
            f"{labels.dtype} of shape {labels.shape}."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"{path}: labels must lie in 0..{n_classes - 1}; got {int(labels.min())}..{int(labels.max())}."
        )
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())  # (n, 3, 32, 32): R, G, B planes, row-major
    return x, torch.from_numpy(labels.astype(np.int64))
