"""Run a bundle: ``load_bundle(dir).device().encode(x)`` and ``.server().decode(payload)``.

::

    device:  image (B, C, H, W) ─► head.onnx (onnxruntime) ─► symbols ─► bottleneck.compress
             ─► payload.pack ─► bytes
    server:  bytes ─► payload.unpack (Limits) ─► bottleneck.decompress ─► symbols
             ─► tail.onnx (onnxruntime) ─► output ─► top-k

Loading verifies the manifest (its own digest, then the pydantic schema), then every file's
size and sha256, and runs what it verified: each file is read once into memory, hashed,
and that same buffer goes to onnxruntime or safetensors. Nothing in a bundle is unpickled:
ONNX is protobuf, tables are safetensors, the manifest is JSON, and the bottleneck module
is rebuilt by name from this package's own code. ``tail.pt2`` is hashed but never loaded
(see :mod:`targets.tail` for why).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ValidationError

from splitter.deploy import payload
from splitter.errors import BundleError, InputShapeError, PayloadError
from targets.bundle import FILES
from targets.manifest import MANIFEST, SCHEMA_VERSION, Manifest, digest_of
from targets.tables import load_bottleneck

__all__ = ["Bundle", "Device", "Server", "Prediction", "load_bundle", "read_manifest"]

_NP_DTYPES = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8, "int8": np.int8,
              "int16": np.int16, "int32": np.int32, "int64": np.int64}


class Prediction(BaseModel):
    """One of the top-k classes of a sample: class index and softmax probability."""

    index: int
    score: float


def read_manifest(directory: str | Path) -> Manifest:
    """Parse and check ``manifest.json`` in ``directory``; :class:`BundleError` names what is wrong."""
    path = Path(directory) / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise BundleError(f"{MANIFEST} is missing from {directory}; is this a bundle written by "
                          f"splitter.export?", file=MANIFEST) from e
    except OSError as e:
        raise BundleError(f"cannot read {MANIFEST}: {e}", file=MANIFEST) from e
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{MANIFEST} is not valid JSON ({e}); the bundle is damaged, export it "
                          f"again", file=MANIFEST) from e
    if not isinstance(data, dict):
        raise BundleError(f"{MANIFEST} holds a {type(data).__name__}, not an object", file=MANIFEST)
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(f"{MANIFEST} has schema_version {version!r}; this splitter reads "
                          f"{SCHEMA_VERSION}. Export the bundle again with this splitter.", file=MANIFEST)
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as e:
        first = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()[:3])
        raise BundleError(f"{MANIFEST} does not match schema {SCHEMA_VERSION}: {first}",
                          file=MANIFEST) from e
    if digest_of(raw, manifest.manifest_sha256) != manifest.manifest_sha256:
        raise BundleError(f"{MANIFEST} was modified after export (its manifest_sha256 does not "
                          f"match its bytes); export the bundle again", file=MANIFEST)
    missing = [f for f in FILES if f not in manifest.files]
    if missing:
        raise BundleError(f"{MANIFEST} lists no {missing}; the bundle is incomplete", file=MANIFEST)
    for name in manifest.files:
        if Path(name).name != name or name in (".", "..", MANIFEST):
            raise BundleError(f"{MANIFEST} names a file outside the bundle: {name!r}", file=MANIFEST)
    return manifest


class Bundle:
    """A verified bundle directory. ``device()`` and ``server()`` build the two runtimes."""

    def __init__(self, path: Path, manifest: Manifest):
        self.path = path
        self.manifest = manifest

    def read(self, name: str) -> bytes:
        """The bytes of bundle file ``name``, checked against the manifest's size and sha256."""
        import hashlib

        entry = self.manifest.files.get(name)
        if entry is None:
            raise BundleError(f"{name} is not listed in {MANIFEST}", file=name)
        try:
            data = (self.path / name).read_bytes()
        except FileNotFoundError as e:
            raise BundleError(f"{name} is missing from the bundle {self.path}; export it again",
                              file=name) from e
        except OSError as e:
            raise BundleError(f"cannot read {name}: {e}", file=name) from e
        if len(data) != entry.size:
            raise BundleError(f"{name} has {len(data)} bytes, the manifest says {entry.size}: it is "
                              f"truncated or replaced; export the bundle again", file=name)
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise BundleError(f"{name} does not match its sha256 in the manifest: it was modified "
                              f"after export; export the bundle again", file=name)
        return data

    def device(self, *, threads: int | None = None) -> Device:
        return Device(self, threads=threads)

    def server(self, *, limits: payload.Limits | None = None, threads: int | None = None) -> Server:
        return Server(self, limits=limits, threads=threads)

    def __repr__(self) -> str:
        m = self.manifest
        return (f"Bundle({str(self.path)!r}, model={m.model!r}, at={m.cut.name!r}, "
                f"bottleneck={m.bottleneck.kind!r})")


def load_bundle(directory: str | Path) -> Bundle:
    """Open a bundle written by :func:`splitter.export`, verifying the manifest and every file.

    Raises :class:`~splitter.errors.BundleError` (with ``.file``) for a missing, truncated,
    modified or unknown-schema file.
    """
    path = Path(directory)
    if not path.is_dir():
        raise BundleError(f"{path} is not a directory; pass the folder splitter.export wrote",
                          file=str(path))
    bundle = Bundle(path, read_manifest(path))
    for name in bundle.manifest.files:
        bundle.read(name)
    return bundle


def _session(data: bytes, name: str, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise BundleError(f"onnxruntime cannot load {name}: {e}", file=name) from e


def _run(sess, x: np.ndarray, dynamic: bool, batch: int) -> list[np.ndarray]:
    """Run ``sess`` on ``x``; a static-batch model gets ``batch``-sized slices."""
    name = sess.get_inputs()[0].name
    if dynamic or x.shape[0] == batch:
        return sess.run(None, {name: x})
    if batch != 1 and x.shape[0] % batch:
        raise InputShapeError(f"this bundle's ONNX file takes batches of exactly {batch}; got {x.shape[0]}")
    parts = [sess.run(None, {name: x[i:i + batch]}) for i in range(0, x.shape[0], batch)]
    return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]


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
