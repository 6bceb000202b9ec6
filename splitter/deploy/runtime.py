"""Open a bundle: ``load_bundle(dir).device().encode(x)`` and ``.server().decode(payload)``.

This module verifies and reads bundles; the two sides live in ``device.py`` and ``server.py``.

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
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from splitter.deploy import payload
from splitter.errors import BundleError, InputShapeError
from targets.bundle import FILES
from targets.manifest import MANIFEST, SCHEMA_VERSION, Manifest, digest_of

__all__ = ["Bundle", "Device", "Server", "Prediction", "load_bundle", "read_manifest"]

if TYPE_CHECKING:
    from splitter.deploy.device import Device
    from splitter.deploy.server import Prediction, Server

_NP_DTYPES = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8, "int8": np.int8,
              "int16": np.int16, "int32": np.int32, "int64": np.int64}


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
        from splitter.deploy.device import Device

        return Device(self, threads=threads)

    def server(self, *, limits: payload.Limits | None = None, threads: int | None = None) -> Server:
        from splitter.deploy.server import Server

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




def __getattr__(name: str) -> Any:  # Device / Server / Prediction, kept importable from here
    if name == "Device":
        from splitter.deploy.device import Device

        return Device
    if name in ("Server", "Prediction"):
        from splitter.deploy import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
