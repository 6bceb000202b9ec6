"""The server side of a bundle: ``Server.decode(payload) -> output``, ``predict`` -> top-k.

::

    bytes ─► payload.unpack (Limits) ─► bottleneck.decompress ─► symbols (B, *S)   decode_symbols
    symbols of several requests, stacked (ΣB, *S) ─► tail.onnx (onnxruntime) ─► outputs   run_tail
    output (B, classes) ─► softmax ─► top-k                                         predict / topk

``decode_symbols`` and ``run_tail`` are the two halves a dynamic batcher
(:mod:`splitter.deploy.batching`) calls separately: each request is validated and
entropy-decoded alone, then the symbols of concurrent requests run through the tail as one
batch. ``decode`` is the two back to back for one payload.

The tail runs on an onnxruntime execution provider picked by :func:`resolve_provider`:
the one asked for (``"cpu"``, ``"cuda"``, ... or a full onnxruntime name), else the best
one this onnxruntime build has; onnxruntime's CPU provider stays behind it as a fallback for
any node the chosen one cannot run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from splitter.deploy import payload
from splitter.deploy.runtime import Bundle, _run
from splitter.errors import BundleError, PayloadError
from targets.tables import load_bottleneck

__all__ = ["Server", "SymbolDecoder", "Prediction", "resolve_provider", "PROVIDER_ALIASES"]

# Short names for onnxruntime's execution providers, and the order "best available" tries
# them in. TensorRT is left out of the default: it compiles an engine per shape on first use.
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
_PREFERENCE = ["CUDAExecutionProvider", "ROCMExecutionProvider", "DmlExecutionProvider",
               "CoreMLExecutionProvider", "CPUExecutionProvider"]


def resolve_provider(provider: str | None = None) -> str:
    """``"cuda"`` / ``"CUDAExecutionProvider"`` / ``None`` (best available) -> an onnxruntime name.

    Raises :class:`BundleError` naming the providers this onnxruntime has when the asked-for
    one is unknown or not built in.
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider is None or provider == "auto":
        return next((p for p in _PREFERENCE if p in available), "CPUExecutionProvider")
    name = PROVIDER_ALIASES.get(provider.lower(), provider)
    if name not in available:
        short = sorted(k for k, v in PROVIDER_ALIASES.items() if v in available)
        hint = (" (install onnxruntime-gpu for cuda)" if name == "CUDAExecutionProvider" else "")
        raise BundleError(f"execution provider {provider!r} is not in this onnxruntime build; it has "
                          f"{available}: pass --provider {' or '.join(short) or 'cpu'}{hint}",
                          file="tail.onnx")
    return name


def _tail_session(data: bytes, threads: int | None, provider: str, spinning: bool = False):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # onnxruntime's idle intra-op threads spin by default; in a server they burn the cores the
    # HTTP loop, the payload decoders and any other process need (bench/serve_load.py measured
    # the tail alone at 3.8 img/s spinning vs 6.8 not, on 2 busy cores).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    providers = [provider] + (["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [])
    try:
        return ort.InferenceSession(data, opts, providers=providers)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise BundleError(f"onnxruntime cannot load tail.onnx with {provider}: {e}",
                          file="tail.onnx") from e


class Prediction(BaseModel):
    """One of the top-k classes of a sample: class index and softmax probability."""

    index: int
    score: float


class SymbolDecoder:
    """Payload bytes -> symbols ``(B, *S)``, from a server manifest and its coder tables.

    The decoding half of :class:`Server` without the tail (the Triton Python-backend model
    of :mod:`targets.triton` runs this alone).
    """

    def __init__(self, manifest, tables: bytes, limits: payload.Limits | None = None):
        m = manifest
        self.manifest = m
        self.limits = limits or payload.Limits()
        self.bottleneck = load_bottleneck(m.bottleneck, tables)
        self.kind = m.bottleneck.kind
        self._spatial = tuple(m.symbols.spatial)
        self._shape = tuple(m.symbols.shape)
        self._dtype = getattr(torch, m.symbols.dtype)

    @property
    def symbol_shape(self) -> tuple[int, ...]:
        """Per-sample symbols ``S``: ``decode_symbols`` returns ``(B, *S)``."""
        return self._shape

    def unpack(self, data: bytes) -> payload.Payload:
        """Validate the payload's framing against the limits and this bundle (cheap: no decoding)."""
        p = payload.unpack(data, self.limits, kind=self.kind, expected=self._spatial)
        if p.spatial != self._spatial:
            raise PayloadError(f"payload symbol dims {p.spatial} are not this bundle's {self._spatial}")
        return p

    def decode_symbols(self, data: bytes | payload.Payload) -> torch.Tensor:
        """Validate the payload and entropy-decode it; :class:`PayloadError` on anything wrong."""
        p = data if isinstance(data, payload.Payload) else self.unpack(data)
        with torch.no_grad():
            symbols = payload.decode_strings(self.bottleneck, p)
        if tuple(symbols.shape) != (p.batch, *self._shape):
            raise PayloadError(f"payload decodes to {tuple(symbols.shape)}, not (B, *{self._shape})")
        return symbols.to(self._dtype)


class Server(SymbolDecoder):
    """Server side: ``decode(payload) -> output`` and ``predict(payload, k) -> top-k``.

    ``provider``: onnxruntime execution provider for the tail (see :func:`resolve_provider`);
    ``spinning``: let onnxruntime's idle threads spin (off: they would compete with the rest).
    """

    def __init__(self, bundle: Bundle, *, limits: payload.Limits | None = None,
                 threads: int | None = None, provider: str | None = None, spinning: bool = False):
        super().__init__(bundle.manifest, bundle.read("tables.safetensors"), limits)
        self._sess = _tail_session(bundle.read("tail.onnx"), threads, resolve_provider(provider),
                                   spinning)
        self.provider = self._sess.get_providers()[0]
        self.output_names = [o.name for o in self._sess.get_outputs()]

    @property
    def batchable(self) -> bool:
        """Whether ``run_tail`` takes any batch size (False: the ONNX tail is fixed to one > 1)."""
        info = self.manifest.export.tail
        return info.dynamic_batch or info.batch == 1

    @property
    def classifier(self) -> bool:
        """One ``(B, classes)`` output: logits, whose top-k ``predict`` gives."""
        outs = self.manifest.outputs
        return len(outs) == 1 and len(outs[0].shape) == 1

    def run_tail(self, symbols: np.ndarray) -> list[np.ndarray]:
        """Symbols ``(N, *S)`` (one request's, or several stacked) -> every tail output ``(N, ...)``.

        Each sample's rows are the same bits whatever else shares the batch (onnxruntime's CPU
        kernels loop over the batch; ``tests/test_serve_oip.py`` checks it on this model family).
        """
        info = self.manifest.export.tail
        return _run(self._sess, np.ascontiguousarray(symbols), info.dynamic_batch, info.batch)

    def decode(self, data: bytes) -> torch.Tensor | tuple[torch.Tensor, ...] | dict[str, torch.Tensor]:
        """Payload bytes -> the model's output for every sample in it."""
        outs = [torch.from_numpy(o) for o in self.run_tail(self.decode_symbols(data).numpy())]
        if self.manifest.output_structure == "dict":  # the model's own keys (tail.onnx output names)
            return dict(zip(self.output_names, outs))
        return outs[0] if len(outs) == 1 else tuple(outs)

    def topk(self, logits: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(B, classes)`` logits -> softmax ``scores`` (B, k) float32 and ``indices`` (B, k) int64."""
        if not self.classifier:
            raise BundleError("top-k needs a model with one (B, classes) output; ask for its "
                              "outputs by name instead", file="tail.onnx")
        probs = torch.as_tensor(logits).float().softmax(dim=1)
        scores, idx = probs.topk(max(1, min(int(k), probs.shape[1])), dim=1)
        return scores.numpy(), idx.numpy().astype(np.int64)

    def predict(self, data: bytes, k: int = 5) -> list[list[Prediction]]:
        """Top-``k`` classes (softmax scores) of every sample in the payload."""
        out = self.decode(data)
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            raise BundleError("predict needs a model with one (B, classes) output; use decode()",
                              file="tail.onnx")
        return self.predictions(out, k)

    def predictions(self, logits: np.ndarray | torch.Tensor, k: int) -> list[list[Prediction]]:
        """``(B, classes)`` logits -> per sample, the top-``k`` :class:`Prediction` list."""
        scores, idx = self.topk(logits, k)
        return [[Prediction(index=int(i), score=float(s)) for s, i in zip(srow, irow)]
                for srow, irow in zip(scores.tolist(), idx.tolist())]

    def info(self) -> dict[str, Any]:
        m = self.manifest
        return {"model": m.model, "cut": m.cut.name, "bottleneck": m.bottleneck.kind,
                "symbols": m.symbols.shape, "classes": m.outputs[0].shape if m.outputs else None,
                "provider": self.provider}
