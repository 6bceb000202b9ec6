"""``manifest.json``: what a bundle holds, how it was made, and how well it matches the model.

A versioned pydantic schema (``schema_version``); unknown fields are rejected, so a manifest
from a newer splitter or an edited one fails validation instead of being half-understood.

::

    Manifest
    ├── schema_version, created_by, model, mode
    ├── cut          name, index, tensors crossing it (shape, dtype)
    ├── input        shape + preprocess (resize, crop, mean/std from timm's pretrained_cfg)
    ├── symbols      per-sample shape, dtype, payload dims        (the head's output)
    ├── outputs      the tail's outputs
    ├── bottleneck   kind, options, shapes                       (rebuilds the coder)
    ├── costs        CostReport as a dict (None when not computed)
    ├── versions     torch, timm, compressai, onnx, onnxruntime, splitter
    ├── export       exporter of each file, dynamic batch or not
    ├── parity       ONNX head vs torch head, bundle vs in-process split
    ├── files        name -> sha256, size                        (every other file)
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

from targets.onnx_head import OnnxExport
from targets.tables import BottleneckSpec
from targets.tail import Pt2Export

__all__ = ["SCHEMA_VERSION", "MANIFEST", "Manifest", "FileEntry", "TensorInfo", "Preprocess",
           "CutInfo", "ExportInfo", "Parity", "package_versions", "sha256_file", "dump", "digest_of"]

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
_ZERO = "0" * 64


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class TensorInfo(_Strict):
    """One tensor, per sample (no batch dimension)."""

    name: str
    shape: list[int]
    dtype: str


class Preprocess(_Strict):
    """Image -> input tensor, as timm's eval transform: resize, centre crop, scale, normalise."""

    input_size: list[int] = Field(description="(C, H, W) the head takes")
    mean: list[float]
    std: list[float]
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    crop_mode: str = "center"
    source: str = Field(description="'timm pretrained_cfg' or 'imagenet default'")


class CutInfo(_Strict):
    name: str
    index: int
    tensors: list[TensorInfo]


class SymbolsInfo(_Strict):
    shape: list[int]
    dtype: str
    spatial: list[int] = Field(description="symbol dims the payload header carries")


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
    passed: bool
    criteria: str


class Manifest(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    created_by: str
    model: str
    mode: str
    cut: CutInfo
    input: TensorInfo
    preprocess: Preprocess
    symbols: SymbolsInfo
    outputs: list[TensorInfo]
    bottleneck: BottleneckSpec
    costs: dict[str, Any] | None = None
    versions: dict[str, str]
    export: ExportInfo
    parity: Parity | None = None
    files: dict[str, FileEntry]
    manifest_sha256: str = Field(_ZERO, pattern=r"^[0-9a-f]{64}$")


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


def digest_of(raw: bytes, claimed: str) -> str:
    """sha256 of the manifest bytes ``raw`` with the ``claimed`` digest zeroed (once)."""
    needle = f'"manifest_sha256": "{claimed}"'.encode()
    if raw.count(needle) != 1:
        return ""
    return hashlib.sha256(raw.replace(needle, f'"manifest_sha256": "{_ZERO}"'.encode())).hexdigest()


def dump(manifest: Manifest) -> bytes:
    """The manifest as UTF-8 JSON bytes carrying their own digest."""
    body = manifest.model_copy(update={"manifest_sha256": _ZERO}).model_dump(mode="json")
    raw = (json.dumps(body, indent=2) + "\n").encode()
    digest = hashlib.sha256(raw).hexdigest()
    return raw.replace(f'"manifest_sha256": "{_ZERO}"'.encode(), f'"manifest_sha256": "{digest}"'.encode())
