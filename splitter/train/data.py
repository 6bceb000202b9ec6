"""Datasets for fitting and evaluation: any ``torch.utils.data.Dataset`` of ``(image, label)``,
plus two built-ins that also keep the source image (for input-compression baselines).

::

    source image (native resolution, PIL) ──transform──► tensor (C, H, W) ──► model
          │  raw(i)                              (the model's own preprocessing)
          └──► JPEG / WebP ──► decoded PIL ──transform──► tensor      (evaluate.py)

- :func:`digits`: scikit-learn's bundled handwritten digits (1,797 real 8×8 images with
  4-bit gray levels 0..16, no download), upscaled to the model input, with a fixed seeded
  stratified train/test split.
- :func:`image_folder`: ``DIR/<class>/<image>`` (torchvision ``ImageFolder`` listing) with
  the model's own preprocessing from timm (``resolve_data_config`` + ``create_transform``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from splitter.errors import SplitterError

__all__ = ["SourceImages", "digits", "digits_transform", "image_folder", "as_dataset", "DIGITS_SIZE"]

DIGITS_SIZE = 1797  # images in sklearn.datasets.load_digits


class SourceImages(Dataset):
    """``(transform(raw(i)), label)`` pairs; ``raw(i)`` is the source image as a PIL image.

    ``transform`` maps a PIL image to the model's input tensor ``(C, H, W)``. Tensors are
    computed once and kept when ``cache=True`` (small datasets such as digits).
    """

    def __init__(self, load: Callable[[int], Image.Image], targets: Sequence[int],
                 transform: Callable[[Image.Image], torch.Tensor], classes: Sequence[str],
                 *, cache: bool = False, name: str = "images",
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self._load = load
        self.augment = augment
        self.targets = [int(t) for t in targets]
        self.transform = transform
        self.classes = list(classes)
        self.name = name
        self._cache: torch.Tensor | None = None
        if cache and len(self.targets):
            self._cache = torch.stack([transform(load(i)) for i in range(len(self.targets))])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self._cache[i] if self._cache is not None else self.transform(self._load(i))
        if self.augment is not None:
            x = self.augment(x)
        return x, self.targets[i]

    def raw(self, i: int) -> Image.Image:
        """The source image at its native resolution (what a device would hold)."""
        return self._load(i)

    def __repr__(self) -> str:
        return f"SourceImages({self.name!r}, {len(self)} images, {len(self.classes)} classes)"


# -- digits -----------------------------------------------------------------------------------

def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()  # bundled with scikit-learn: no network
    return d.images.astype(np.uint8), d.target.astype(np.int64)  # (1797, 8, 8) in 0..16


def digits_split(seed: int = 0, test_size: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)`` into the 1,797 digits: stratified, fixed by ``seed``."""
    from sklearn.model_selection import train_test_split

    _, y = _load_digits()
    idx = np.arange(len(y))
    train, test = train_test_split(idx, test_size=test_size, random_state=seed, stratify=y)
    return np.sort(train), np.sort(test)


def digits_transform(input_size: Sequence[int] = (3, 32, 32)) -> Callable[[Image.Image], torch.Tensor]:
    """PIL (any mode, any size) -> ``(C, H, W)`` float tensor in [-1, 1]: the digits preprocessing.

    Bilinear upscaling to ``(H, W)``, gray replicated to ``C`` channels, ``(v - 0.5) / 0.5``.
    """
    from torchvision import transforms as T

    c, h, w = (int(v) for v in input_size)
    return T.Compose([
        T.Grayscale(num_output_channels=c),  # decoded WebP comes back as RGB; gray again
        T.Resize((h, w), interpolation=T.InterpolationMode.BILINEAR, antialias=True),
        T.ToTensor(),
        T.Normalize([0.5] * c, [0.5] * c),
    ])


def digits_augment() -> Callable[[torch.Tensor], torch.Tensor]:
    """Small random affine moves of a preprocessed digit (±10°, ±1 source pixel, ±10 %
    scale), background filled with the preprocessed black (-1). Uses torch's global RNG."""
    from torchvision.transforms import v2

    return v2.RandomAffine(degrees=10, translate=(0.125, 0.125), scale=(0.9, 1.1), fill=-1.0)


def digits(split: str = "train", input_size: Sequence[int] = (3, 32, 32), *, seed: int = 0,
           test_size: float = 0.2, augment: bool = False) -> SourceImages:
    """scikit-learn's handwritten digits as a dataset of model inputs.

    ``split``: ``"train"`` (1,437 images), ``"test"`` (360) or ``"all"`` (1,797). The source
    image (``raw(i)``) is the 8×8 original with its 17 gray levels mapped to 0..255
    (``round(v * 255 / 16)``); ``__getitem__`` gives ``(C, H, W)`` tensors, randomly moved
    by :func:`digits_augment` when ``augment``.
    """
    images, labels = _load_digits()
    if split == "all":
        idx = np.arange(len(labels))
    elif split in ("train", "test"):
        idx = digits_split(seed, test_size)[0 if split == "train" else 1]
    else:
        raise SplitterError(f"digits split must be 'train', 'test' or 'all', not {split!r}")
    gray = np.round(images[idx].astype(np.float64) * 255.0 / 16.0).astype(np.uint8)

    def load(i: int) -> Image.Image:
        return Image.fromarray(gray[i], mode="L")

    return SourceImages(load, labels[idx], digits_transform(input_size),
                        [str(k) for k in range(10)], cache=True, name=f"digits/{split}",
                        augment=digits_augment() if augment else None)


# -- image folders ----------------------------------------------------------------------------

def image_folder(root: str, model: nn.Module | str | None = None, *,
                 input_size: Sequence[int] | None = None) -> SourceImages:
    """``root/<class>/<image>`` with ``model``'s preprocessing (timm data config).

    ``model`` supplies the mean/std/interpolation/crop (``timm.data.resolve_data_config``);
    ``input_size`` overrides its input size.
    """
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder

    if not os.path.isdir(root):
        raise SplitterError(f"image folder {root!r} does not exist; give a directory with one "
                            f"sub-folder of images per class, or 'digits'")
    folder = ImageFolder(root)
    if isinstance(model, str):
        from splitter.compile.trace import load_model

        model = load_model(model)[0]
    args: dict[str, Any] = {"input_size": tuple(input_size)} if input_size else {}
    cfg = resolve_data_config(args, model=model) if model is not None else resolve_data_config(args)
    transform = create_transform(**cfg)

    def load(i: int) -> Image.Image:
        with Image.open(folder.samples[i][0]) as im:
            return im.convert("RGB")

    return SourceImages(load, folder.targets, transform, folder.classes, name=root)


def as_dataset(data: str | Dataset, *, split: str = "train", model: nn.Module | str | None = None,
               input_size: Sequence[int] | None = None, seed: int = 0) -> Dataset:
    """``"digits"`` (its ``split``), a directory (``DIR/split`` when it exists) or a Dataset."""
    if isinstance(data, Dataset):
        return data
    if data == "digits":
        return digits(split, input_size or (3, 32, 32), seed=seed)
    sub = os.path.join(data, split)
    return image_folder(sub if os.path.isdir(sub) else data, model, input_size=input_size)
