"""Write a bundle directory: every file staged in a hidden sibling, hashed, then renamed in.

::

    out/.bundle-XXXX/  head.onnx  tail.onnx  tail.pt2  tables.safetensors   (stage)
                       manifest.json  (hashes of the four, written last)  (write_manifest)
    out/  ◄── rename ──┘                                                    (commit)

The staging directory lives in the same parent, so the final ``rename`` is atomic on one
filesystem: a reader sees the old bundle, or the new one whole, never a half-written file.
Replacing an existing bundle takes two renames (old aside, new in); in between the
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
    MANIFEST,
    CutInfo,
    ExportInfo,
    Manifest,
    Preprocess,
    SymbolsInfo,
    TensorInfo,
    dump,
    package_versions,
    sha256_file,
)
from targets.onnx_head import export_head
from targets.tables import save_tables, spec_of
from targets.tail import export_tail, tail_output_names

__all__ = ["FILES", "stage", "write_manifest", "check_target", "commit", "make_staging_dir", "preprocess_of"]

FILES = ("head.onnx", "tail.onnx", "tail.pt2", "tables.safetensors")
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


def stage(split, staging: Path, *, exporter: str = "auto", costs: dict[str, Any] | None = None) -> Manifest:
    """Export every file of ``split`` into ``staging``; return the manifest (no parity yet)."""
    if split.bottleneck is None:
        raise BundleError("a plain split has no coder to deploy; split with bottleneck='identity' "
                          "(raw features) or a compressing kind such as 'crbq' or 'entropy'",
                          file="manifest.json")
    g = split.graph
    head = export_head(split, staging / "head.onnx", exporter=exporter)
    tail = export_tail(split, staging, exporter=exporter)
    save_tables(split.bottleneck, staging / "tables.safetensors")

    x = g.example_input[:1]
    with torch.no_grad():
        symbols = split.head(x)
        out = split.tail(symbols)
    outs = [out] if isinstance(out, torch.Tensor) else list(out)
    names = tail_output_names(out)
    for f in FILES:
        _fsync(staging / f)
    return Manifest(
        created_by=f"splitter {package_versions()['splitter']}",
        model=g.name,
        mode=split.mode,
        cut=CutInfo(name=split.cut.name, index=split.cut.index,
                    tensors=[TensorInfo(name=t.name, shape=list(t.shape[1:]), dtype=_dtype(t.dtype))
                             for t in split.cut.tensors]),
        input=TensorInfo(name="image", shape=list(g.input_shape), dtype="float32"),
        preprocess=preprocess_of(g),
        symbols=SymbolsInfo(shape=list(symbols.shape[1:]), dtype=_dtype(symbols.dtype),
                            spatial=list(split.bottleneck.spatial(symbols))),
        outputs=[TensorInfo(name=n, shape=list(o.shape[1:]), dtype=_dtype(o.dtype))
                 for n, o in zip(names, outs)],
        bottleneck=spec_of(split),
        costs=costs,
        versions=package_versions(),
        export=ExportInfo(head=head, tail=tail.onnx, tail_pt2=tail.pt2),
        files={f: sha256_file(staging / f) for f in FILES},
    )


def write_manifest(manifest: Manifest, directory: Path) -> None:
    """``manifest.json`` via a temporary file and ``os.replace``: never half-written."""
    tmp = directory / f".{MANIFEST}.tmp"
    with open(tmp, "wb") as f:
        f.write(dump(manifest))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / MANIFEST)


def check_target(out_dir: Path) -> None:
    """Refuse, before any work, to replace something that is not a bundle."""
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir())
                                                      and not (out_dir / MANIFEST).exists())):
        raise BundleError(f"{out_dir} exists and is not a bundle; export into a new or empty "
                          f"directory (nothing was overwritten)", file=str(out_dir))


def commit(staging: Path, out_dir: Path) -> None:
    """Move the finished ``staging`` directory to ``out_dir`` (replacing an older bundle)."""
    # mkdtemp made the directory 0700 (and safetensors writes 0600): give the bundle the
    # modes a normal directory gets, so a server running as another user can read it.
    umask = os.umask(0)
    os.umask(umask)
    for f in staging.iterdir():
        f.chmod(0o666 & ~umask)
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
