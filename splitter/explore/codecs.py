"""codecs: the input-compression baselines, measured on the same held-out data as the trials.

::

    source image (native resolution, PIL) ─► JPEG | WebP | AVIF | HEIF | JPEG XL at quality q
        ─► file bytes (len = the wire size, container and headers included)
        ─► decode ─► the model's preprocessing ─► teacher ─► top-1 (vs labels, or vs the
           teacher on the untouched image when the data has no labels)

Encoders are the maintained ones Pillow reaches: libjpeg (optimized Huffman tables), libwebp
(method 6, its slowest and smallest), libavif (Pillow's AVIF plugin, speed 0), libheif with
x265 (``pillow-heif``: HEVC intra, the family of the SC2 paper's BPG baseline) and libjxl
(``pillow-jxl-plugin``, effort 9). Bits per pixel divide the file's bits by the model input's
H×W, as trials do, so both curves share an axis.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Collection, Sequence

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel
from torch import nn
from torch.utils.data import Dataset

from splitter.errors import ConfigError, SplitterError

__all__ = ["CodecPoint", "encode_image", "codec_curves", "ALL_CODECS", "QUALITIES", "available"]

ALL_CODECS: tuple[str, ...] = ("jpeg", "webp", "avif", "heif", "jxl")
QUALITIES: tuple[int, ...] = (1, 5, 10, 20, 30, 50, 75, 90)
_INSTALL = {"heif": "pip install pillow-heif", "jxl": "pip install pillow-jxl-plugin",
            "avif": "pip install 'pillow>=11.2' (Pillow's own AVIF plugin)"}


class CodecPoint(BaseModel):
    """One codec at one quality, measured on every held-out sample."""

    method: str  # jpeg, webp, avif, heif, jxl
    quality: int
    accuracy: float  # top-1 (or teacher agreement, see metric)
    metric: str = "accuracy"
    bytes_mean: float
    bytes_p50: float
    bytes_p95: float
    bpp: float
    samples: int

    @property
    def setting(self) -> str:
        return f"q={self.quality}"


def _register(codec: str) -> None:
    """Load the Pillow plugin of ``codec``; ConfigError names the package when it is missing."""
    try:
        if codec == "heif":
            import pillow_heif

            pillow_heif.register_heif_opener()
        elif codec == "jxl":
            import pillow_jxl  # noqa: F401 - registers the JXL plugin with Pillow
        elif codec == "avif":
            from PIL import features

            if not features.check("avif"):
                raise ImportError("this Pillow has no AVIF support")
    except ImportError as e:
        raise ConfigError(f"the {codec} baseline needs its encoder: {_INSTALL[codec]} "
                          f"(or drop it from --codecs)") from e


def available(codec: str) -> bool:
    try:
        _register(codec)
    except ConfigError:
        return False
    return True


def encode_image(image: Image.Image, codec: str, quality: int) -> bytes:
    """The file ``codec`` writes for ``image`` at ``quality`` (1..100)."""
    if codec not in ALL_CODECS:
        raise ConfigError(f"unknown input codec {codec!r}; use one of {', '.join(ALL_CODECS)}")
    if codec in _INSTALL:
        _register(codec)
    im = image if image.mode in ("L", "RGB") else image.convert("RGB")
    buf = io.BytesIO()
    q = int(quality)
    if codec == "jpeg":
        im.save(buf, format="JPEG", quality=q, optimize=True)
    elif codec == "webp":
        im.save(buf, format="WEBP", quality=q, method=6)
    elif codec == "avif":
        im.save(buf, format="AVIF", quality=q, speed=0)
    elif codec == "heif":
        im.save(buf, format="HEIF", quality=q)
    else:
        im.save(buf, format="JXL", quality=q, effort=9)
    return buf.getvalue()


def _decode(blob: bytes) -> Image.Image:
    with Image.open(io.BytesIO(blob)) as im:
        im.load()
        return im.copy()


def _logits(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def codec_curves(teacher: nn.Module, data: Dataset, *, codecs: Sequence[str] = ALL_CODECS,
                 qualities: Sequence[int] = QUALITIES, labelled: bool = True,
                 limit: int | None = None, batch_size: int = 256, progress: bool = False,
                 skip: Collection[tuple[str, int]] = (),
                 on_point: Callable[[CodecPoint], None] | None = None) -> list[CodecPoint]:
    """``teacher`` on held-out inputs that went through each codec at each quality.

    ``data`` must keep its source images (``data.raw(i)`` and ``data.transform``), as the
    datasets of :mod:`splitter.train.data` do. ``progress``: a tqdm bar over the (codec,
    quality) settings (on 10,000 Fashion-MNIST images HEIF alone takes over four minutes per
    quality). ``skip``: ``(codec, quality)`` settings not to measure (already cached);
    ``on_point`` is called with each point as it is measured (to cache it).
    """
    if not (hasattr(data, "raw") and hasattr(data, "transform")):
        raise SplitterError("input-codec baselines need the source images: use "
                            "splitter.train.data.digits / fashion_mnist / image_folder (they keep "
                            ".raw and .transform), or pass codecs=()")
    for c in codecs:
        if c not in ALL_CODECS:
            raise ConfigError(f"unknown input codec {c!r}; use one of {', '.join(ALL_CODECS)}")
        if c in _INSTALL:
            _register(c)
    teacher.eval()
    n = len(data) if limit is None else min(limit, len(data))
    raws = [data.raw(i) for i in range(n)]
    x0 = data[0][0]
    pixels = int(x0.shape[-1] * x0.shape[-2])

    def predict(xs: list[torch.Tensor]) -> np.ndarray:
        return np.concatenate([_logits(teacher(torch.stack(xs[k:k + batch_size]))).argmax(-1).numpy()
                               for k in range(0, len(xs), batch_size)])

    if labelled:
        ref = np.asarray([int(data.targets[i]) if hasattr(data, "targets") else int(data[i][1])
                          for i in range(n)])
    else:
        ref = predict([data[i][0] for i in range(n)])
    out = []
    bar = None
    skipped = set(skip)
    todo = [(c, int(q)) for c in codecs for q in qualities if (c, int(q)) not in skipped]
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"input codecs on {n} images", unit="setting", leave=False)
    for codec in codecs:
        for q in qualities:
            if (codec, int(q)) not in todo:
                continue
            if bar is not None:
                bar.set_postfix_str(f"{codec} q={q}")
            blobs = [encode_image(im, codec, q) for im in raws]
            preds = predict([data.transform(_decode(b)) for b in blobs])
            sizes = np.asarray([len(b) for b in blobs], dtype=np.float64)
            out.append(CodecPoint(method=codec, quality=int(q), accuracy=float((preds == ref).mean()),
                                  metric="accuracy" if labelled else "agreement",
                                  bytes_mean=float(sizes.mean()), bytes_p50=float(np.percentile(sizes, 50)),
                                  bytes_p95=float(np.percentile(sizes, 95)),
                                  bpp=float(sizes.mean()) * 8 / pixels, samples=n))
            if on_point is not None:
                on_point(out[-1])
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    return out
