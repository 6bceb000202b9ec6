"""Write an export: two bundle halves staged in a hidden sibling, hashed, then renamed in.

::

    out/.bundle-XXXX/  device/ head.onnx  coder.safetensors                     (stage)
                       server/ tail.onnx  tail.pt2  tables.safetensors
                       */manifest.json  (hashes of the half's files, written last)  (write_manifest)
    out/  ◄── rename ──┘                                                          (commit)

``device/`` is all a device needs (the head, the coder's tables, preprocessing and the
symbol spec: no decoder or tail weights); ``server/`` is the tail and the decoder's state.
Each half verifies alone; the two share an export id (see :mod:`targets.manifest`).

The staging directory lives in the same parent, so the final ``rename`` is atomic on one
filesystem: a reader sees the old export, or the new one whole, never a half-written file.
Replacing an existing export takes two renames (old aside, new in); in between the
directory is briefly absent, not partial.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from splitter.errors import BundleError
from targets.manifest import (
    DEVICE_DIR,
    DEVICE_FILES,
    MANIFEST,
    SERVER_DIR,
    SERVER_FILES,
    CoderInfo,
    CutInfo,
    DeviceExportInfo,
    DeviceManifest,
    ExportInfo,
    Manifest,
    Preprocess,
    SymbolsInfo,
    TensorInfo,
    dump,
    new_export_id,
    package_versions,
    sha256_file,
)
from targets.onnx_head import export_head
from targets.tables import save_device_tables, save_tables, spec_of
from targets.tail import export_tail, flat_outputs, output_structure, tail_output_names

__all__ = ["DEVICE_FILES", "SERVER_FILES", "stage", "write_manifest", "check_target", "commit",
           "make_staging_dir", "preprocess_of", "is_export", "coder_info", "replace_file"]
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _dtype(t: torch.dtype | str) -> str:
    return str(t).replace("torch.", "")


def preprocess_of(graph) -> Preprocess:
    """Resize/crop/normalise for ``graph``'s input, from timm's pretrained_cfg when it has one."""
    cfg = dict(getattr(graph, "data_config", {}) or {})
    c = graph.input_shape[0]
    mean, std = cfg.get("mean"), cfg.get("std")
    source = "timm pretrained_cfg"
    if mean is None or std is None:
        mean, std, source = _IMAGENET[0], _IMAGENET[1], "imagenet default"
    mean, std = list(mean), list(std)
    if len(mean) != c:  # e.g. a 1-channel model with 3-channel stats: repeat the first
        mean, std = [mean[0]] * c, [std[0]] * c
    return Preprocess(input_size=list(graph.input_shape), mean=mean, std=std,
                      interpolation=str(cfg.get("interpolation", "bilinear")),
                      crop_pct=float(cfg.get("crop_pct", 0.875)),
                      crop_mode=str(cfg.get("crop_mode", "center")), source=source)


def make_staging_dir(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def coder_info(bottleneck) -> CoderInfo:
    """What the device's coder needs to know beyond its tables (see :class:`CoderInfo`)."""
    from splitter.deploy import coder, payload

    kind = bottleneck.kind
    info = CoderInfo(format=coder.FORMAT, payload_version=payload.VERSION)
    if kind in ("jpeg", "webp"):
        info = info.model_copy(update={"image_size": list(bottleneck.image_size),
                                       "quality": int(bottleneck.quality)})
    return info


def stage(split, staging: Path, *, exporter: str = "auto",
          costs: dict[str, Any] | None = None) -> tuple[DeviceManifest, Manifest]:
    """Export every file of ``split`` into ``staging/device`` and ``staging/server``; return
    both manifests (no parity yet)."""
    if split.bottleneck is None:
        raise BundleError("a plain split has no coder to deploy; split with bottleneck='identity' "
                          "(raw features) or a compressing kind such as 'crbq' or 'entropy'",
                          file="manifest.json")
    g = split.graph
    dev, srv = staging / DEVICE_DIR, staging / SERVER_DIR
    dev.mkdir()
    srv.mkdir()
    x = g.example_input[:1]
    with torch.no_grad():
        symbols = split.head(x)
        out = split.tail(symbols)
        split.bottleneck.compress(symbols)  # builds coder tables still empty (lazy update())
    head = export_head(split, dev / "head.onnx", exporter=exporter)
    save_device_tables(split.bottleneck, dev / "coder.safetensors")
    tail = export_tail(split, srv, exporter=exporter)
    save_tables(split.bottleneck, srv / "tables.safetensors")

    names = tail_output_names(out)
    for d, files in ((dev, DEVICE_FILES), (srv, SERVER_FILES)):
        for f in files:
            _fsync(d / f)
    common = dict(
        export_id=new_export_id(),
        created_by=f"splitter {package_versions()['splitter']}",
        model=g.name,
        mode=split.mode,
        cut=CutInfo(name=split.cut.name, index=split.cut.index,
                    tensors=list(split.cut.tensors)),
        input=TensorInfo(name="image", shape=list(g.input_shape), dtype="float32"),
        preprocess=preprocess_of(g),
        symbols=SymbolsInfo(shape=list(symbols.shape[1:]), dtype=_dtype(symbols.dtype),
                            spatial=list(split.bottleneck.spatial(symbols))),
        bottleneck=spec_of(split),
        coder=coder_info(split.bottleneck),
        versions=package_versions(),
    )
    device = DeviceManifest(**common, export=DeviceExportInfo(head=head),
                            files={f: sha256_file(dev / f) for f in DEVICE_FILES})
    server = Manifest(
        **common,
        outputs=[TensorInfo(name=n, shape=list(o.shape[1:]), dtype=_dtype(o.dtype))
                 for n, o in zip(names, flat_outputs(out))],
        output_structure=output_structure(out),
        costs=costs,
        export=ExportInfo(head=head, tail=tail.onnx, tail_pt2=tail.pt2),
        files={f: sha256_file(srv / f) for f in SERVER_FILES},
    )
    return device, server


def replace_file(half_dir: Path, manifest: DeviceManifest | Manifest, name: str,
                 data: bytes) -> DeviceManifest | Manifest:
    """Hook for steps after :func:`stage` (an int8 head, say): write ``data`` as ``name`` in a
    staged half and return its manifest with that file's size and sha256 updated."""
    if name not in manifest.files:
        raise BundleError(f"{name} is not a file of this half ({sorted(manifest.files)})", file=name)
    path = half_dir / name
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return manifest.model_copy(update={"files": {**manifest.files, name: sha256_file(path)}})


def write_manifest(manifest: Manifest, directory: Path) -> None:
    """``manifest.json`` via a temporary file and ``os.replace``: never half-written."""
    tmp = directory / f".{MANIFEST}.tmp"
    with open(tmp, "wb") as f:
        f.write(dump(manifest))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / MANIFEST)


def is_export(path: Path) -> bool:
    """Whether ``path`` holds what :func:`commit` writes (or a bundle of an older layout)."""
    return any((path / sub / MANIFEST).exists() for sub in (DEVICE_DIR, SERVER_DIR, "."))


def check_target(out_dir: Path) -> None:
    """Refuse, before any work, to replace something that is not a bundle."""
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir())
                                                      and not is_export(out_dir))):
        raise BundleError(f"{out_dir} exists and is not a bundle; export into a new or empty "
                          f"directory (nothing was overwritten)", file=str(out_dir))


def commit(staging: Path, out_dir: Path) -> None:
    """Move the finished ``staging`` directory to ``out_dir`` (replacing an older bundle)."""
    # mkdtemp made the directory 0700 (and safetensors writes 0600): give the bundle the
    # modes a normal directory gets, so a server running as another user can read it.
    umask = os.umask(0)
    os.umask(umask)
    for sub in (staging / DEVICE_DIR, staging / SERVER_DIR):
        for f in sub.iterdir():
            f.chmod(0o666 & ~umask)
        sub.chmod(0o777 & ~umask)
        _fsync(sub)
    staging.chmod(0o777 & ~umask)
    _fsync(staging)
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    check_target(out_dir)  # again: it may have changed while we exported
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    os.rename(out_dir, old / "bundle")
    os.rename(staging, out_dir)
    shutil.rmtree(old, ignore_errors=True)
