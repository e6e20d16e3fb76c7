"""Analysis: pure functions used by the tests, ``theory/`` and the notebooks."""

from .claims import Check, ClaimReport
from .memory import saved_tensor_bytes

__all__ = ["Check", "ClaimReport", "saved_tensor_bytes"]
