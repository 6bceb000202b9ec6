"""Open a bundle: ``load_bundle(dir).device().encode(x)`` and ``.server().decode(payload)``.

This module verifies and reads bundles; the two sides live in ``device.py`` and ``server.py``.
It imports no torch and no pydantic (numpy; a device half's manifest is checked by
:mod:`targets.device_manifest`, a server half's by the pydantic models): a device runs it.

::

    export dir/ ─► device/manifest.json ─► verify ─► device half ─┐  same export_id, cut,
               └─► server/manifest.json ─► verify ─► server half ─┴─ symbols, coder, versions
                                                                      (else BundleError)
    device/ alone ─► Bundle with a device half only: .device() encodes, .server() refuses
    server/ alone ─► Bundle with a server half only: .server() decodes, .device() refuses

Loading verifies each manifest (its schema, then its own digest), then every file's
size and sha256, and runs what it verified: each file is read once into memory, hashed,
and that same buffer goes to onnxruntime or safetensors. Nothing in a bundle is unpickled:
ONNX is protobuf, tables are safetensors, the manifest is JSON, and the bottleneck module
is rebuilt by name from this package's own code. ``tail.pt2`` is hashed but never loaded
(see :mod:`targets.tail` for why).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from splitter.deploy import payload
from splitter.errors import BundleError, InputShapeError
from targets import device_manifest
from targets.device_manifest import (
    DEVICE_DIR,
    DEVICE_FILES,
    MANIFEST,
    SCHEMA_VERSION,
    SERVER_DIR,
    SERVER_FILES,
    TIED,
    digest_of,
)

__all__ = ["Bundle", "BundleHalf", "Device", "Server", "Prediction", "load_bundle",
           "read_manifest", "check_pair"]

if TYPE_CHECKING:
    from splitter.deploy.device import Device
    from splitter.deploy.server import Prediction, Server
    from targets.device_manifest import View as DeviceManifest
    from targets.manifest import Manifest

_NP_DTYPES = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8, "int8": np.int8,
              "int16": np.int16, "int32": np.int32, "int64": np.int64}
_ROLES = {"device": DEVICE_FILES, "server": SERVER_FILES}


def read_manifest(directory: str | Path, *, prefix: str = "") -> DeviceManifest | Manifest:
    """Parse and check ``manifest.json`` in ``directory`` (a device or a server half);
    :class:`BundleError` names what is wrong (``prefix`` + file name)."""
    name = prefix + MANIFEST
    path = Path(directory) / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise BundleError(f"{name} is missing from {directory}; is this a bundle written by "
                          f"splitter.export?", file=name) from e
    except OSError as e:
        raise BundleError(f"cannot read {name}: {e}", file=name) from e
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{name} is not valid JSON ({e}); the bundle is damaged, export it "
                          f"again", file=name) from e
    if not isinstance(data, dict):
        raise BundleError(f"{name} holds a {type(data).__name__}, not an object", file=name)
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(f"{name} has schema_version {version!r}; this splitter reads "
                          f"{SCHEMA_VERSION}. Export the bundle again with this splitter.", file=name)
    role = data.get("role")
    if role not in _ROLES:
        raise BundleError(f"{name} has role {role!r}, not 'device' or 'server'; export the bundle "
                          f"again", file=name)
    required = _ROLES[role]
    if role == "device":  # no pydantic on a device: the same schema, checked by device_manifest
        problems = device_manifest.check(data)
        if problems:
            raise BundleError(f"{name} does not match schema {SCHEMA_VERSION}: "
                              f"{'; '.join(problems[:3])}", file=name)
        manifest = device_manifest.View(data)
    else:
        from pydantic import ValidationError

        from targets.manifest import Manifest

        try:
            manifest = Manifest.model_validate(data)
        except ValidationError as e:
            first = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()[:3])
            raise BundleError(f"{name} does not match schema {SCHEMA_VERSION}: {first}", file=name) from e
    if digest_of(raw, manifest.manifest_sha256) != manifest.manifest_sha256:
        raise BundleError(f"{name} was modified after export (its manifest_sha256 does not "
                          f"match its bytes); export the bundle again", file=name)
    missing = [f for f in required if f not in manifest.files]
    if missing:
        raise BundleError(f"{name} lists no {missing}; the bundle is incomplete", file=name)
    for f in manifest.files:
        if Path(f).name != f or f in (".", "..", MANIFEST):
            raise BundleError(f"{name} names a file outside the bundle: {f!r}", file=name)
    return manifest


class BundleHalf:
    """One verified half (``device/`` or ``server/``) and its manifest."""

    def __init__(self, path: Path, manifest: DeviceManifest | Manifest, prefix: str = ""):
        self.path = path
        self.manifest = manifest
        self.prefix = prefix  # how errors name its files: "device/" inside an export dir

    @property
    def role(self) -> str:
        return self.manifest.role

    def read(self, name: str) -> bytes:
        """The bytes of file ``name``, checked against the manifest's size and sha256."""
        shown = self.prefix + name
        entry = self.manifest.files.get(name)
        if entry is None:
            raise BundleError(f"{shown} is not listed in {self.prefix}{MANIFEST}", file=shown)
        try:
            data = (self.path / name).read_bytes()
        except FileNotFoundError as e:
            raise BundleError(f"{shown} is missing from the bundle {self.path}; export it again",
                              file=shown) from e
        except OSError as e:
            raise BundleError(f"cannot read {shown}: {e}", file=shown) from e
        if len(data) != entry.size:
            raise BundleError(f"{shown} has {len(data)} bytes, the manifest says {entry.size}: it "
                              f"is truncated or replaced; export the bundle again", file=shown)
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise BundleError(f"{shown} does not match its sha256 in the manifest: it was modified "
                              f"after export; export the bundle again", file=shown)
        return data


def check_pair(device: DeviceManifest, server: Manifest, where: str = "") -> None:
    """Refuse a device half and a server half that do not come from the same export
    (compared as the JSON both were written as)."""
    dev, srv = device.model_dump(mode="json"), server.model_dump(mode="json")
    diff = [k for k in TIED if dev.get(k) != srv.get(k)]
    if diff:
        first = diff[0]
        raise BundleError(
            f"{where}device/ and server/ do not belong together: they differ in {diff} "
            f"(device {first}={dev.get(first)!r:.120}, server {first}="
            f"{srv.get(first)!r:.120}). Deploy both halves of one export.",
            file=f"{DEVICE_DIR}/{MANIFEST}")


class Bundle:
    """A verified bundle: a device half, a server half, or both from one export.

    ``device()`` and ``server()`` build the two runtimes; ``manifest`` is the server's
    manifest when there is one (it holds outputs, costs and parity), else the device's.
    """

    def __init__(self, path: Path, device: BundleHalf | None = None, server: BundleHalf | None = None):
        if device is None and server is None:
            raise BundleError(f"{path} holds neither half of a bundle", file=str(path))
        if device is not None and server is not None:
            check_pair(device.manifest, server.manifest, f"{path}: ")
        self.path = path
        self.device_half = device
        self.server_half = server

    @property
    def manifest(self) -> Manifest | DeviceManifest:
        return (self.server_half or self.device_half).manifest

    @property
    def device_manifest(self) -> DeviceManifest:
        return self._half("device").manifest

    def _half(self, role: str) -> BundleHalf:
        half = self.device_half if role == "device" else self.server_half
        if half is None:
            other = "server" if role == "device" else "device"
            raise BundleError(f"{self.path} is a {other} bundle: it has no {role} half. Load the "
                              f"export directory or its {role}/ folder for that",
                              file=f"{role}/{MANIFEST}")
        return half

    def read(self, name: str) -> bytes:
        """The verified bytes of file ``name`` from whichever half lists it."""
        for half in (self.server_half, self.device_half):
            if half is not None and name in half.manifest.files:
                return half.read(name)
        raise BundleError(f"{name} is not listed in this bundle's manifests", file=name)

    def device(self, *, threads: int | None = None) -> Device:
        from splitter.deploy.device import Device

        self._half("device")
        return Device(self, threads=threads)

    def server(self, *, limits: payload.Limits | None = None, threads: int | None = None,
               **kwargs: Any) -> Server:
        from splitter.deploy.server import Server

        self._half("server")
        return Server(self, limits=limits, threads=threads, **kwargs)

    def __repr__(self) -> str:
        m = self.manifest
        halves = "+".join(h.role for h in (self.device_half, self.server_half) if h is not None)
        return (f"Bundle({str(self.path)!r}, {halves}, model={m.model!r}, at={m.cut.name!r}, "
                f"bottleneck={m.bottleneck.kind!r})")


def _load_half(path: Path, prefix: str) -> BundleHalf:
    half = BundleHalf(path, read_manifest(path, prefix=prefix), prefix)
    for name in half.manifest.files:
        half.read(name)
    return half


def load_bundle(directory: str | Path) -> Bundle:
    """Open what :func:`splitter.export` wrote, verifying every manifest and file.

    ``directory`` is the export directory (both halves, checked to belong together), or
    one half on its own (``device/``: encodes; ``server/``: decodes). Raises
    :class:`~splitter.errors.BundleError` (with ``.file``) for a missing, truncated,
    modified, mismatched or unknown-schema file.
    """
    path = Path(directory)
    if not path.is_dir():
        raise BundleError(f"{path} is not a directory; pass the folder splitter.export wrote",
                          file=str(path))
    if (path / MANIFEST).exists():  # one half on its own
        half = _load_half(path, "")
        return Bundle(path, **{half.role: half})
    halves = {}
    for sub in (DEVICE_DIR, SERVER_DIR):
        if (path / sub).is_dir():
            half = _load_half(path / sub, f"{sub}/")
            if half.role != sub:
                raise BundleError(f"{sub}/{MANIFEST} is a {half.role} manifest", file=f"{sub}/{MANIFEST}")
            halves[sub] = half
    if not halves:
        raise BundleError(f"{path} holds no {MANIFEST}, {DEVICE_DIR}/ or {SERVER_DIR}/; pass the "
                          f"folder splitter.export wrote (or one of its halves)", file=MANIFEST)
    return Bundle(path, **halves)


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
