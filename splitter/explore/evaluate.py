"""evaluate: accuracy and bytes per sample, measured from real payloads and real files.

::

    split / bundle:   x ─► encode ─► payload bytes ─► decode ─► logits      one payload per sample
    teacher:          x ─► model ─► logits
    input codecs:     source image (native resolution) ─► JPEG | WebP at quality q (Pillow)
                      ─► file bytes ─► decode ─► the model's preprocessing ─► teacher ─► logits

Sizes are ``len(bytes)`` of what would go on the wire: the whole payload (header included)
for a split, the whole file (container and headers included) for JPEG and WebP. JPEG is
written with optimized Huffman tables and WebP with its slowest, smallest method, so the
baseline is as small as Pillow makes it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel
from torch import nn
from torch.utils.data import DataLoader, Dataset

from splitter.errors import SplitterError

__all__ = ["EvalRow", "EvalReport", "evaluate", "evaluate_model", "evaluate_payloads",
           "codec_baseline", "encode_image", "payload_sizes", "QUALITIES", "CODECS"]

QUALITIES: tuple[int, ...] = (1, 5, 10, 20, 30, 50, 75, 90)
CODECS: tuple[str, ...] = ("jpeg", "webp")


class EvalRow(BaseModel):
    """One measured configuration."""

    method: str  # "teacher", "split", "jpeg", "webp", or a label given by the caller
    setting: str = ""  # e.g. "q=10", "lossless", "entropy channels=8"
    accuracy: float
    bytes_mean: float | None = None  # per sample, measured
    bytes_min: int | None = None
    bytes_max: int | None = None
    samples: int


class EvalReport(BaseModel):
    """Rows for one dataset; ``reference`` is the teacher's row when one was measured."""

    data: str
    samples: int
    rows: list[EvalRow] = []

    def by(self, method: str) -> list[EvalRow]:
        return [r for r in self.rows if r.method == method]

    def smallest_reaching(self, accuracy: float, methods: Sequence[str] = CODECS) -> EvalRow | None:
        """The smallest (mean bytes) row of ``methods`` whose accuracy is at least ``accuracy``."""
        ok = [r for r in self.rows if r.method in methods and r.bytes_mean is not None
              and r.accuracy >= accuracy - 1e-12]
        return min(ok, key=lambda r: r.bytes_mean) if ok else None

    def table(self) -> str:
        from splitter._text import table

        rows = [[r.method, r.setting, f"{100 * r.accuracy:.2f}",
                 "" if r.bytes_mean is None else f"{r.bytes_mean:.1f}",
                 "" if r.bytes_min is None else f"{r.bytes_min}-{r.bytes_max}"] for r in self.rows]
        return table(rows, ["method", "setting", "top-1 %", "bytes/sample", "range"])


def _row(method: str, setting: str, correct: int, sizes: list[int], n: int) -> EvalRow:
    return EvalRow(method=method, setting=setting, accuracy=correct / max(n, 1),
                   bytes_mean=float(np.mean(sizes)) if sizes else None,
                   bytes_min=int(min(sizes)) if sizes else None,
                   bytes_max=int(max(sizes)) if sizes else None, samples=n)


def _logits(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def evaluate_model(model: nn.Module, data: Dataset, *, batch_size: int = 256,
                   method: str = "teacher", setting: str = "") -> EvalRow:
    """Top-1 accuracy of ``model`` on ``data`` (no compression)."""
    model.eval()
    correct = n = 0
    for x, y in DataLoader(data, batch_size=batch_size):
        correct += int((_logits(model(x)).argmax(-1) == torch.as_tensor(y)).sum())
        n += len(y)
    return _row(method, setting, correct, [], n)


def _coders(target: Any):
    """``(encode, decode)`` of a Split or a loaded bundle."""
    if hasattr(target, "device") and hasattr(target, "server") and callable(target.server):
        dev, srv = target.device(), target.server()
        return dev.encode, srv.decode
    if hasattr(target, "encode") and hasattr(target, "decode"):
        return target.encode, target.decode
    raise SplitterError(f"cannot evaluate a {type(target).__name__}: give a Split with a "
                        f"bottleneck or a bundle from splitter.load_bundle")


@torch.no_grad()
def evaluate_payloads(target: Any, data: Dataset, *, method: str = "split", setting: str = "",
                      limit: int | None = None) -> EvalRow:
    """Encode every sample on its own (one payload each, as a device sends it), decode it
    on the server side, and count bytes and correct top-1 predictions."""
    if hasattr(target, "eval"):
        target.eval()
    encode, decode = _coders(target)
    n = len(data) if limit is None else min(limit, len(data))
    correct, sizes = 0, []
    for i in range(n):
        x, y = data[i]
        payload = encode(x.unsqueeze(0))
        sizes.append(len(payload))
        correct += int(int(_logits(decode(payload)).argmax(-1)[0]) == int(y))
    return _row(method, setting, correct, sizes, n)


@torch.no_grad()
def payload_sizes(target: Any, samples: Sequence[torch.Tensor]) -> tuple[list[int], np.ndarray]:
    """Each ``(1, C, H, W)`` sample as its own payload: ``(len(payload) per sample, top-1 of
    the decoded output per sample)``."""
    if hasattr(target, "eval"):
        target.eval()
    encode, decode = _coders(target)
    sizes, preds = [], []
    for x in samples:
        payload = encode(x)
        sizes.append(len(payload))
        preds.append(int(_logits(decode(payload)).reshape(1, -1).argmax(-1)[0]))
    return sizes, np.asarray(preds, dtype=np.int64)


def encode_image(image: Image.Image, codec: str, quality: int | str) -> bytes:
    """The file Pillow writes for ``image``: JPEG (optimized Huffman tables, the image's own
    mode) or WebP (method 6; ``quality="lossless"`` for lossless); ``avif``, ``heif`` and
    ``jxl`` as :func:`splitter.explore.codecs.encode_image` writes them."""
    buf = io.BytesIO()
    if codec == "jpeg":
        im = image if image.mode in ("L", "RGB") else image.convert("RGB")
        im.save(buf, format="JPEG", quality=int(quality), optimize=True)
    elif codec == "webp":
        if quality == "lossless":
            image.save(buf, format="WEBP", lossless=True, quality=100, method=6)
        else:
            image.save(buf, format="WEBP", quality=int(quality), method=6)
    else:  # AVIF, HEIF, JPEG XL: splitter.explore.codecs
        from splitter.explore.codecs import encode_image as encode_other

        return encode_other(image, codec, int(quality))
    return buf.getvalue()


@torch.no_grad()
def codec_baseline(model: nn.Module, data: Dataset, *, codecs: Sequence[str] = CODECS,
                   qualities: Sequence[int] = QUALITIES, lossless_webp: bool = True,
                   batch_size: int = 256) -> list[EvalRow]:
    """``model`` on inputs that went through JPEG / WebP at each quality, with file sizes.

    ``data`` must keep its source images: ``data.raw(i)`` (PIL, native resolution) and
    ``data.transform`` (PIL -> model input), as :mod:`splitter.train.data` datasets do.
    """
    if not (hasattr(data, "raw") and hasattr(data, "transform")):
        raise SplitterError("the input-compression baseline needs the source images: use "
                            "splitter.train.data.digits / image_folder (they have .raw and .transform)")
    model.eval()
    settings: list[tuple[str, int | str]] = [(c, q) for c in codecs for q in qualities]
    if lossless_webp and "webp" in codecs:
        settings.append(("webp", "lossless"))
    labels = torch.as_tensor(list(data.targets) if hasattr(data, "targets")
                             else [int(data[i][1]) for i in range(len(data))])
    rows = []
    for codec, q in settings:
        xs, sizes = [], []
        for i in range(len(data)):
            blob = encode_image(data.raw(i), codec, q)
            sizes.append(len(blob))
            with Image.open(io.BytesIO(blob)) as im:
                xs.append(data.transform(im.copy()))
        correct = 0
        for k in range(0, len(xs), batch_size):
            logits = _logits(model(torch.stack(xs[k:k + batch_size])))
            correct += int((logits.argmax(-1) == labels[k:k + batch_size]).sum())
        setting = "lossless" if q == "lossless" else f"q={q}"
        rows.append(_row(codec, setting, correct, sizes, len(xs)))
    return rows


def evaluate(target: Any = None, data: Dataset | None = None, *, teacher: nn.Module | None = None,
             codecs: Sequence[str] = CODECS, qualities: Sequence[int] = QUALITIES,
             name: str | None = None, setting: str = "", limit: int | None = None) -> EvalReport:
    """Teacher accuracy, the split's (or bundle's) accuracy and payload bytes, and the
    teacher on JPEG/WebP-compressed inputs, all on ``data``."""
    if data is None:
        raise SplitterError("evaluate needs data=: splitter.train.data.digits('test') or an image folder")
    report = EvalReport(data=name or getattr(data, "name", type(data).__name__), samples=len(data))
    if teacher is not None:
        report.rows.append(evaluate_model(teacher, data))
    if target is not None:
        report.rows.append(evaluate_payloads(target, data, setting=setting, limit=limit))
    if teacher is not None and codecs:
        report.rows.extend(codec_baseline(teacher, data, codecs=codecs, qualities=qualities))
    return report
