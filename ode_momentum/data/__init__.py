"""Data sets: toy sets generated from a seed (nested rings) and real sets shipped with scikit-learn (digits).

Every generator takes a ``seed`` and uses a private random generator; none touches the global random state.
"""

from .digits import DatasetSplit, load_digits
from .rings import make_rings

__all__ = ["DatasetSplit", "load_digits", "make_rings"]
