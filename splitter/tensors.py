"""``TensorSpec``: the one description of a tensor, for cut points, cost reports and manifests.

::

    traced tensor (B, *S) ─► TensorSpec(name, shape=S, dtype) ─► .nbytes = prod(S) · itemsize

Shapes are per sample (no batch dimension) everywhere. A leaf: pydantic only, no torch, so
a device runtime reads manifests without loading torch.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict

__all__ = ["TensorSpec", "ITEMSIZE", "itemsize"]

ITEMSIZE = {"bool": 1, "uint8": 1, "int8": 1, "float8_e4m3fn": 1, "float8_e5m2": 1,
            "int16": 2, "uint16": 2, "float16": 2, "bfloat16": 2,
            "int32": 4, "uint32": 4, "float32": 4, "complex32": 4,
            "int64": 8, "uint64": 8, "float64": 8, "complex64": 8, "complex128": 16}


def itemsize(dtype: str) -> int:
    """Bytes per element of a dtype named as torch/numpy name it (``float32``, ``int64``)."""
    try:
        return ITEMSIZE[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; known: {sorted(ITEMSIZE)}") from None


class TensorSpec(BaseModel):
    """One tensor, per sample: ``name``, ``shape`` (no batch dimension) and ``dtype``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        """Bytes of one sample's tensor."""
        return math.prod(self.shape) * itemsize(self.dtype)
