"""The device side of a bundle: ``Device.encode(image batch) -> payload bytes``.

::

    image (B, C, H, W) ─► head.onnx (onnxruntime) ─► symbols ─► bottleneck.compress
    ─► payload.pack ─► bytes
"""

from __future__ import annotations

import numpy as np
import torch

from splitter.deploy import payload
from splitter.deploy.runtime import Bundle, _run, _session
from splitter.errors import InputShapeError
from targets.tables import load_bottleneck

__all__ = ["Device"]


class Device:
    """Device side: ``encode(image batch) -> payload bytes`` with the ONNX head."""

    def __init__(self, bundle: Bundle, *, threads: int | None = None):
        m = bundle.manifest
        self.manifest = m
        self._sess = _session(bundle.read("head.onnx"), "head.onnx", threads)
        self.bottleneck = load_bottleneck(m.bottleneck, bundle.read("tables.safetensors"))
        self.kind = m.bottleneck.kind
        self._spatial = tuple(m.symbols.spatial)  # the server's too: one sample goes short form

    def symbols(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``(B, C, H, W)`` or ``(C, H, W)`` float -> symbols ``(B, *S)`` from head.onnx."""
        arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        want = tuple(self.manifest.input.shape)
        if arr.ndim == len(want):
            arr = arr[None]
        if tuple(arr.shape[1:]) != want:
            raise InputShapeError(f"input has shape {tuple(arr.shape)}; this bundle's head takes "
                                  f"(B, {', '.join(map(str, want))})")
        info = self.manifest.export.head
        out = _run(self._sess, np.ascontiguousarray(arr, dtype=np.float32), info.dynamic_batch, info.batch)
        return torch.from_numpy(out[0])

    def encode(self, x: torch.Tensor | np.ndarray) -> bytes:
        """Image batch -> payload bytes (head, entropy coding, framing)."""
        symbols = self.symbols(x)
        with torch.no_grad():
            return payload.encode_symbols(self.bottleneck, symbols, self._spatial)

    def preprocess(self, image) -> np.ndarray:
        """An image file or PIL image -> ``(C, H, W)`` float32 with the model's preprocessing."""
        from splitter.deploy.preprocess import preprocess

        return preprocess(image, self.manifest.preprocess)

    def encode_images(self, images: list) -> bytes:
        """Image files (or PIL images) -> one payload holding them all."""
        return self.encode(np.stack([self.preprocess(im) for im in images]))
