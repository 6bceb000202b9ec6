"""Image file -> model input, as timm's eval transform does it (Pillow and numpy only).

::

    image ─► RGB ─► resize (shorter side to floor(H / crop_pct)) ─► centre crop H×W
          ─► [0, 1] ─► (x - mean) / std ─► (C, H, W) float32

timm's ``create_transform`` needs torchvision, which a device may not have; this mirrors
``timm.data.transforms_imagenet_eval`` (Resize then CenterCrop, torchvision's rounding) with
the numbers the manifest carries.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from splitter.errors import InputShapeError

__all__ = ["load_image", "preprocess"]

_FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def load_image(image):
    """A path or a PIL image -> PIL image (decoded, EXIF orientation applied)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image
    try:
        with Image.open(Path(image)) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
            return im
    except (FileNotFoundError, UnidentifiedImageError, OSError) as e:
        raise InputShapeError(f"cannot read image {image}: {e}; pass a JPEG/PNG/WebP file") from e


def preprocess(image, pre) -> np.ndarray:
    """``image`` (path or PIL) -> ``(C, H, W)`` float32 per ``pre`` (a manifest ``Preprocess``)."""
    im = load_image(image)
    c, h, w = pre.input_size
    im = im.convert("L" if c == 1 else "RGB")
    resample = _FILTERS.get(pre.interpolation, 2)
    if pre.crop_mode == "squash":  # timm: resize both sides, then crop
        sh, sw = math.floor(h / pre.crop_pct), math.floor(w / pre.crop_pct)
        im = im.resize((sw, sh), resample)
    else:
        sh, sw = math.floor(h / pre.crop_pct), math.floor(w / pre.crop_pct)
        if sh == sw:  # torchvision Resize(int): shorter side to sh, aspect kept
            iw, ih = im.size
            if iw <= ih:
                new = (sh, int(sh * ih / iw))
            else:
                new = (int(sh * iw / ih), sh)
        else:
            new = (sw, sh)
        im = im.resize(new, resample)
    iw, ih = im.size
    if iw < w or ih < h:
        raise InputShapeError(f"image of {iw}x{ih} is smaller than the {w}x{h} input after resizing")
    top, left = int(round((ih - h) / 2.0)), int(round((iw - w) / 2.0))  # torchvision CenterCrop
    im = im.crop((left, top, left + w, top + h))
    arr = np.asarray(im, dtype=np.float32) / 255.0
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    mean = np.asarray(pre.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(pre.std, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((arr - mean) / std, dtype=np.float32)
