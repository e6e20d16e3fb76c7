"""Analysis: pure functions used by the tests, ``theory/`` and the notebooks."""

from .memory import saved_tensor_bytes

__all__ = ["saved_tensor_bytes"]
