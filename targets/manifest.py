"""``manifest.json``: what a bundle half holds, how it was made, and how well it matches the model.

An export writes two halves, each a directory with its own manifest, files and digests:

::

    out/device/  manifest.json (DeviceManifest)  head.onnx  coder.safetensors
    out/server/  manifest.json (Manifest)        tail.onnx  tail.pt2  tables.safetensors

Both manifests carry the same ``export_id`` and the same cut, symbol spec, coder, bottleneck
and versions (:data:`TIED`): a device half and a server half belong together only if all of
those are equal. A versioned pydantic schema (``schema_version``); unknown fields are
rejected, so a manifest from a newer splitter or an edited one fails validation instead of
being half-understood. This module imports pydantic only (no torch): the device reads it.

::

    DeviceManifest / Manifest (server)
    ├── schema_version, role, export_id, created_by, model, mode
    ├── cut          name, index, tensors crossing it (shape, dtype)
    ├── input        shape + preprocess (resize, crop, mean/std from timm's pretrained_cfg)
    ├── symbols      per-sample shape, dtype, payload dims        (the head's output)
    ├── bottleneck   kind, options, shapes
    ├── coder        string format, payload version, what the device's coder needs
    ├── versions     torch, timm, compressai, onnx, onnxruntime, splitter (of the exporter)
    ├── export       device: the head's ONNX export; server: head, tail, tail.pt2
    ├── (server) outputs, output_structure, costs, parity
    ├── files        name -> sha256, size                        (every other file of the half)
    └── manifest_sha256   sha256 of this file's bytes with this value zeroed

``manifest_sha256`` makes a damaged manifest name itself: without it, a flipped digit in
another file's hash would be blamed on that file.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from splitter.tensors import TensorSpec

# the constants and the self-digest live where the device reads them without pydantic
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
from targets.device_manifest import ZERO as _ZERO
from targets.int8 import Int8Report
from targets.tables import BuiltBottleneck

__all__ = ["SCHEMA_VERSION", "MANIFEST", "DEVICE_DIR", "SERVER_DIR", "DEVICE_FILES", "SERVER_FILES",
           "TIED", "Manifest", "DeviceManifest", "CoderInfo", "FileEntry", "TensorInfo",
           "Preprocess", "CutInfo", "ExportInfo", "DeviceExportInfo", "OnnxExport", "Pt2Export",
           "Parity", "package_versions", "sha256_file", "dump", "digest_of", "new_export_id"]



class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


TensorInfo = TensorSpec  # one tensor, per sample (the one descriptor: splitter/tensors.py)


class Preprocess(_Strict):
    """Image -> input tensor, as timm's eval transform: resize, centre crop, scale, normalise."""

    input_size: list[int] = Field(description="(C, H, W) the head takes")
    mean: list[float]
    std: list[float]
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    crop_mode: str = "center"
    source: str = Field(description="'timm pretrained_cfg' or 'imagenet default'")


class OnnxExport(BaseModel):
    """How one ONNX file was made (written by :mod:`targets.onnx_head`)."""

    exporter: str = Field(description="'dynamo' or 'torchscript': the exporter that worked")
    dynamic_batch: bool = Field(description="False when the batch size is fixed to the example's")
    batch: int = Field(description="the example's batch size (the only one when not dynamic)")
    opset: int
    attempts: dict[str, str] = Field(default_factory=dict, description="exporters that failed, and why")


class Pt2Export(BaseModel):
    """How ``tail.pt2`` was made (written by :mod:`targets.tail`)."""

    dynamic_batch: bool
    attempts: dict[str, str] = Field(default_factory=dict)


class CutInfo(_Strict):
    name: str
    index: int
    tensors: list[TensorInfo]


class SymbolsInfo(_Strict):
    shape: list[int]
    dtype: str
    spatial: list[int] = Field(description="symbol dims the payload header carries")


class CoderInfo(_Strict):
    """What turns symbols into the payload's strings; the device's coder reads only this and
    ``coder.safetensors``."""

    format: str = Field(description="entropy-coder string format (splitter.deploy.coder.FORMAT)")
    payload_version: int = Field(description="payload header version (splitter.deploy.payload.VERSION)")
    image_size: list[int] | None = Field(None, description="jpeg/webp: (height, width) of the tiled image")
    quality: int | None = Field(None, description="jpeg/webp: codec quality")
    needs_torch: bool = Field(False, description="True when the device's coder runs torch layers "
                                                 "(no kind does since the hyperprior's h_a/h_s "
                                                 "run in numpy; kept for older manifests)")


class DeviceExportInfo(_Strict):
    head: OnnxExport


class ExportInfo(_Strict):
    head: OnnxExport
    tail: OnnxExport
    tail_pt2: Pt2Export
    tail_runtime: Literal["onnxruntime"] = "onnxruntime"


class Parity(_Strict):
    """The bundle checked against the in-process split on ``n_inputs`` inputs."""

    n_inputs: int
    symbols_identical: float = Field(description="fraction of ONNX-head symbols equal to the torch head's")
    symbols_max_abs_diff: float
    symbols_close: bool = Field(description="the symbols criterion of `criteria` holds")
    feature_max_abs_error: float = Field(description="max |decode(onnx symbols) - decode(torch symbols)|")
    output_max_abs_error: float = Field(
        description="max |Server.decode(Device.encode(x)) - split.decode(split.encode(x))|")
    top1_agreement: float = Field(description="fraction of inputs whose top-1 class agrees")
    coder_lossless: bool = Field(description="symbols survive compress/pack/unpack/decompress bit "
                                             "for bit (False by design for jpeg/webp)")
    coder_matches_split: bool = Field(description="the server decodes exactly what the split's own "
                                                  "bottleneck decodes from the same symbols")
    outputs_max_abs_error: dict[str, float] = Field(
        default_factory=dict, description="per output (by name): max |bundle - split| as above")
    passed: bool
    criteria: str


class _Half(_Strict):
    """The fields both halves carry; :data:`TIED` of them must be equal across a pair."""

    schema_version: Literal[2] = SCHEMA_VERSION
    export_id: str = Field(pattern=r"^[0-9a-f]{32}$", description="shared by the two halves of one export")
    created_by: str
    model: str
    mode: str
    cut: CutInfo
    input: TensorInfo
    preprocess: Preprocess
    symbols: SymbolsInfo
    bottleneck: BuiltBottleneck
    coder: CoderInfo
    versions: dict[str, str]
    files: dict[str, FileEntry]
    manifest_sha256: str = Field(_ZERO, pattern=r"^[0-9a-f]{64}$")


class DeviceManifest(_Half):
    """``device/manifest.json``: the head, the coder's tables, preprocessing, symbol spec."""

    role: Literal["device"] = "device"
    export: DeviceExportInfo
    int8: Int8Report | None = Field(None, description="head.onnx is int8: its parity and speed vs fp32")


class Manifest(_Half):
    """``server/manifest.json``: the tail, the decoder's state, outputs, costs and parity."""

    role: Literal["server"] = "server"
    outputs: list[TensorInfo]
    output_structure: Literal["tensor", "tuple", "dict"] = Field(
        "tensor", description="what the model returns: one tensor, a tuple, or a dict keyed by output names")
    costs: dict[str, Any] | None = None
    export: ExportInfo
    parity: Parity | None = None


def new_export_id() -> str:
    import uuid

    return uuid.uuid4().hex


def package_versions() -> dict[str, str]:
    out = {}
    for dist, key in [("torch", "torch"), ("timm", "timm"), ("compressai", "compressai"),
                      ("onnx", "onnx"), ("onnxruntime", "onnxruntime"), ("onnxscript", "onnxscript"),
                      ("sc2-splitter", "splitter")]:
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = "not installed"
    return out


def sha256_file(path: str | Path) -> FileEntry:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return FileEntry(sha256=h.hexdigest(), size=size)


def dump(manifest: Manifest) -> bytes:
    """The manifest as UTF-8 JSON bytes carrying their own digest."""
    body = manifest.model_copy(update={"manifest_sha256": _ZERO}).model_dump(mode="json")
    raw = (json.dumps(body, indent=2) + "\n").encode()
    digest = hashlib.sha256(raw).hexdigest()
    return raw.replace(f'"manifest_sha256": "{_ZERO}"'.encode(), f'"manifest_sha256": "{digest}"'.encode())


def device_schema() -> dict:
    """:class:`DeviceManifest`'s JSON schema as pydantic writes it, less titles and
    descriptions: what :mod:`targets.device_manifest` checks a device manifest against."""
    def strip(x):
        if isinstance(x, dict):
            return {k: ({n: strip(v) for n, v in x[k].items()} if k in ("properties", "$defs")
                        else strip(x[k])) for k in x if k not in ("title", "description")}
        return [strip(v) for v in x] if isinstance(x, list) else x

    return strip(DeviceManifest.model_json_schema())


SCHEMA_FILE = Path(__file__).with_name("_device_schema.py")


def write_device_schema(path: Path = SCHEMA_FILE) -> None:
    """Write :func:`device_schema` as ``targets/_device_schema.py`` (``python -m targets.manifest``)."""
    import pprint

    text = ('"""Generated by ``python -m targets.manifest`` from targets.manifest.DeviceManifest;\n'
            'do not edit (tests/test_device_manifest.py checks it is current)."""\n\n'
            f"SCHEMA = {pprint.pformat(device_schema(), width=100, sort_dicts=True)}\n")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


if __name__ == "__main__":
    write_device_schema()
    print(f"wrote {SCHEMA_FILE}")
