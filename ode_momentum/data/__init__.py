"""Data sets: toy sets generated from a seed (nested rings), real sets shipped with scikit-learn (digits, as
feature vectors or images) and CIFAR-10/100 read from a local copy.

Every generator takes a ``seed`` and uses a private random generator; none touches the global random state.
"""

from .cifar import load_cifar
from .digits import DatasetSplit, load_digits
from .images import ImageSplit, load_digit_images
from .rings import make_rings

__all__ = ["DatasetSplit", "ImageSplit", "load_cifar", "load_digit_images", "load_digits", "make_rings"]
