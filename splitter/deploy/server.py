"""The server side of a bundle: ``Server.decode(payload) -> output``, ``predict`` -> top-k.

::

    bytes ─► payload.unpack (Limits) ─► bottleneck.decompress ─► symbols
    ─► tail.onnx (onnxruntime) ─► output ─► top-k
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from splitter.deploy import payload
from splitter.deploy.runtime import Bundle, _run, _session
from splitter.errors import BundleError, PayloadError
from targets.tables import load_bottleneck

__all__ = ["Server", "Prediction"]


class Prediction(BaseModel):
    """One of the top-k classes of a sample: class index and softmax probability."""

    index: int
    score: float


class Server:
    """Server side: ``decode(payload) -> output`` and ``predict(payload, k) -> top-k``."""

    def __init__(self, bundle: Bundle, *, limits: payload.Limits | None = None,
                 threads: int | None = None):
        m = bundle.manifest
        self.manifest = m
        self.limits = limits or payload.Limits()
        self._sess = _session(bundle.read("tail.onnx"), "tail.onnx", threads)
        self.bottleneck = load_bottleneck(m.bottleneck, bundle.read("tables.safetensors"))
        self.kind = m.bottleneck.kind
        self._spatial = tuple(m.symbols.spatial)
        self._shape = tuple(m.symbols.shape)
        self._dtype = getattr(torch, m.symbols.dtype)

    def decode_symbols(self, data: bytes) -> torch.Tensor:
        """Validate the payload and entropy-decode it; :class:`PayloadError` on anything wrong."""
        p = payload.unpack(data, self.limits, kind=self.kind, expected=self._spatial)
        if p.spatial != self._spatial:
            raise PayloadError(f"payload symbol dims {p.spatial} are not this bundle's {self._spatial}")
        with torch.no_grad():
            symbols = payload.decode_strings(self.bottleneck, p)
        if tuple(symbols.shape) != (p.batch, *self._shape):
            raise PayloadError(f"payload decodes to {tuple(symbols.shape)}, not (B, *{self._shape})")
        return symbols.to(self._dtype)

    def decode(self, data: bytes) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Payload bytes -> the model's output for every sample in it."""
        symbols = self.decode_symbols(data)
        info = self.manifest.export.tail
        outs = _run(self._sess, np.ascontiguousarray(symbols.numpy()), info.dynamic_batch, info.batch)
        outs = [torch.from_numpy(o) for o in outs]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def predict(self, data: bytes, k: int = 5) -> list[list[Prediction]]:
        """Top-``k`` classes (softmax scores) of every sample in the payload."""
        out = self.decode(data)
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            raise BundleError("predict needs a model with one (B, classes) output; use decode()",
                              file="tail.onnx")
        probs = out.float().softmax(dim=1)
        scores, idx = probs.topk(max(1, min(int(k), probs.shape[1])), dim=1)
        return [[Prediction(index=int(i), score=float(s)) for s, i in zip(srow, irow)]
                for srow, irow in zip(scores.tolist(), idx.tolist())]

    def info(self) -> dict[str, Any]:
        m = self.manifest
        return {"model": m.model, "cut": m.cut.name, "bottleneck": m.bottleneck.kind,
                "symbols": m.symbols.shape, "classes": m.outputs[0].shape if m.outputs else None}
