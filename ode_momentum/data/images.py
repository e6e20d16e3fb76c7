"""Image classification sets as ``(n, channels, height, width)`` tensors: the container and the digits.

:class:`ImageSplit` keeps the images in their stored form (uint8 for CIFAR, small floats for the digits) and
normalises one batch at a time (:meth:`ImageSplit.normalise`), so a 50,000-image set costs 150 MB, not 600.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._checks import check_positive_int, check_real
from .rings import check_seed


@dataclass(frozen=True)
class ImageSplit:
    """An image classification set split into train and test tensors.

    Attributes
    ----------
    X_train : Tensor, shape ``(n_train, channels, height, width)``, uint8 or float32
        Stored pixel values in ``[0, scale]``.
    y_train : Tensor, shape ``(n_train,)``, int64, labels in ``0 .. n_classes-1``
    X_test : Tensor, shape ``(n_test, channels, height, width)``
    y_test : Tensor, shape ``(n_test,)``, int64
    n_classes : int
    mean, std : Tensor, shape ``(channels,)``, float32
        Per-channel mean and standard deviation of the *train* images after division by ``scale``.
    scale : float
        Largest stored pixel value (255 for CIFAR, 16 for the digits).
    classes : tuple of str
        Class names, ``n_classes`` of them.
    name : str
        ``"digits"``, ``"cifar10"`` or ``"cifar100"``.
    """

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    mean: torch.Tensor
    std: torch.Tensor
    scale: float
    classes: tuple
    name: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)``."""
        return tuple(self.X_train.shape[1:])

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """``(x / scale - mean) / std`` per channel, float32, for a batch ``x`` of stored images."""
        x = x.to(torch.float32) / self.scale  # (B, C, H, W) in [0, 1]
        return (x - self.mean[:, None, None]) / self.std[:, None, None]


def load_digit_images(*, image_size: int = 8, test_size: float = 0.2, seed: int = 0) -> ImageSplit:
    """scikit-learn's digits as one-channel images, natively 8x8 or upsampled, with the split of ``load_digits``.

    The 1797 images (pixel values 0..16) are split as :func:`ode_momentum.data.load_digits` splits them
    (stratified by class, fixed by ``seed``). With ``image_size > 8`` each image is upsampled bilinearly
    (``torch.nn.functional.interpolate``, ``align_corners=False``). Normalisation uses one mean and one
    standard deviation over all pixels of the train split (not per pixel, which would erase the image
    structure a convolution needs). Nothing is downloaded.

    Parameters
    ----------
    image_size : int
        Height and width of the returned images, ``>= 8`` (8: native; 32: the CIFAR size).
    test_size : float
        Fraction held out for testing, in ``(0, 1)``.
    seed : int
        Seed of the split, ``>= 0``.

    Returns
    -------
    ImageSplit
        ``X_*`` float32 of shape ``(n, 1, image_size, image_size)`` in ``[0, 16]``, ``scale = 16``,
        ``n_classes = 10``, 1437 train and 360 test images at the default ``test_size``.

    Raises
    ------
    TypeError, ValueError
        For a non-int or too small ``image_size``, a bad ``test_size`` or ``seed``.

    References
    ----------
    Alpaydin & Kaynak, "Optical Recognition of Handwritten Digits", UCI ML Repository (1998).
    """
    from sklearn.datasets import load_digits as _sklearn_load_digits
    from sklearn.model_selection import train_test_split

    check_positive_int("image_size", image_size)
    if image_size < 8:
        raise ValueError(f"`image_size` must be >= 8 (the digits are 8x8); got {image_size}. Use 8 or 32.")
    test_size = check_real("test_size", test_size)
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"`test_size` must lie in (0, 1) (a fraction of the samples); got {test_size!r}.")
    seed = check_seed(seed)
    X, y = _sklearn_load_digits(return_X_y=True)  # (1797, 64) float64 in [0, 16], (1797,)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=test_size, random_state=seed, stratify=y)

    def images(X_part):
        x = torch.from_numpy(np.ascontiguousarray(X_part)).to(torch.float32).reshape(-1, 1, 8, 8)
        if image_size != 8:
            x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
        return x

    X_train, X_test = images(X_train), images(X_test)
    scaled = X_train / 16.0
    return ImageSplit(
        X_train, torch.from_numpy(y_train).to(torch.int64), X_test, torch.from_numpy(y_test).to(torch.int64),
        n_classes=10, mean=scaled.mean().reshape(1), std=scaled.std().reshape(1), scale=16.0,
        classes=tuple(str(d) for d in range(10)), name="digits",
    )
