"""scikit-learn's handwritten digits (8x8 images, 10 classes), split and standardised for training."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._checks import check_real
from .._checks import check_seed


@dataclass(frozen=True)
class DatasetSplit:
    """A classification set split into train and test tensors.

    Attributes
    ----------
    X_train : Tensor, shape ``(n_train, n_features)``, float32
    y_train : Tensor, shape ``(n_train,)``, int64, labels in ``0 .. n_classes-1``
    X_test : Tensor, shape ``(n_test, n_features)``, float32
    y_test : Tensor, shape ``(n_test,)``, int64
    n_features : int
    n_classes : int
    """

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    n_features: int
    n_classes: int


def load_digits(*, test_size: float = 0.2, seed: int = 0) -> DatasetSplit:
    """Load scikit-learn's digits (1797 images of 8x8 pixels, 10 classes), split and standardise them.

    The split is stratified by class (``sklearn.model_selection.train_test_split(stratify=y)``) and fixed by
    ``seed``. Each of the 64 pixel features is standardised with the mean and standard deviation of the
    *train* split only, ``x <- (x - mean_train) / std_train``; pixels that are constant on the train split
    (std 0) are only centred. The data ship with scikit-learn: nothing is downloaded.

    Parameters
    ----------
    test_size : float
        Fraction of the samples held out for testing, in ``(0, 1)`` (default 0.2: 1437 train, 360 test).
    seed : int
        Seed of the split, ``>= 0``. The global random state is neither read nor changed.

    Returns
    -------
    DatasetSplit
        ``X_*`` float32 of shape ``(n, 64)`` (standardised pixel intensities, dimensionless), ``y_*`` int64
        of shape ``(n,)``, ``n_features = 64``, ``n_classes = 10``.

    Raises
    ------
    TypeError
        If ``test_size`` is not a real number or ``seed`` not an int.
    ValueError
        If ``test_size`` is outside ``(0, 1)`` or leaves fewer samples than classes on a side, or
        ``seed < 0``.

    References
    ----------
    Alpaydin & Kaynak, "Optical Recognition of Handwritten Digits", UCI ML Repository (1998);
    ``sklearn.datasets.load_digits``.
    """
    # imported here so that `ode_momentum.data` (and the rings) loads without paying scikit-learn's import
    from sklearn.datasets import load_digits as _sklearn_load_digits
    from sklearn.model_selection import train_test_split

    test_size = check_real("test_size", test_size)
    if not 0.0 < test_size < 1.0:
        raise ValueError(
            f"`test_size` must lie in (0, 1) (a fraction of the samples); got {test_size!r}. "
            "The default 0.2 holds out 20%."
        )
    seed = check_seed(seed)
    X, y = _sklearn_load_digits(return_X_y=True)  # (1797, 64) float64 in [0, 16], (1797,) int64
    n_classes = int(y.max()) + 1
    try:
        X_train, X_test, y_train, y_test = train_test_split(
            X, y, test_size=test_size, random_state=seed, stratify=y
        )
    except ValueError as err:  # too few samples on one side to hold every class
        raise ValueError(
            f"`test_size` = {test_size!r} cannot be stratified over {n_classes} classes and {len(y)} samples: "
            f"{err} Use a fraction between about 0.01 and 0.99."
        ) from None
    mean = X_train.mean(axis=0)
    std = X_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # constant border pixels: centre only

    def to_tensors(X_part, y_part):
        X_part = torch.from_numpy((X_part - mean) / std).to(torch.float32)
        return X_part, torch.from_numpy(np.asarray(y_part)).to(torch.int64)

    X_train, y_train = to_tensors(X_train, y_train)
    X_test, y_test = to_tensors(X_test, y_test)
    return DatasetSplit(X_train, y_train, X_test, y_test, n_features=X.shape[1], n_classes=n_classes)
