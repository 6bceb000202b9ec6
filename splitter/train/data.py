"""Datasets for fitting and evaluation: any ``torch.utils.data.Dataset`` of ``(image, label)``,
plus two built-ins that also keep the source image (for input-compression baselines).

::

    source image (native resolution, PIL) ──transform──► tensor (C, H, W) ──► model
          │  raw(i)                              (the model's own preprocessing)
          └──► JPEG / WebP ──► decoded PIL ──transform──► tensor      (evaluate.py)

- :func:`digits`: scikit-learn's bundled handwritten digits (1,797 real 8×8 images with
  4-bit gray levels 0..16, no download), upscaled to the model input, with a fixed seeded
  stratified train/test split.
- :func:`fashion_mnist`: Zalando's Fashion-MNIST (70,000 real 28×28 gray images, 10
  classes) from Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets``), read
  from its IDX files; the digits preprocessing.
- :func:`image_folder`: ``DIR/<class>/<image>`` (torchvision ``ImageFolder`` listing) with
  the model's own preprocessing from timm (``resolve_data_config`` + ``create_transform``).

Every dataset here pickles (its loaders are module-level classes), so sweeps can hand it to
worker processes and Ray.
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

__all__ = ["SourceImages", "digits", "digits_transform", "fashion_mnist", "image_folder", "as_dataset",
           "holdout", "DIGITS_SIZE", "FASHION_DIR"]

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
    return SourceImages(_GrayArray(gray), labels[idx], digits_transform(input_size),
                        [str(k) for k in range(10)], cache=True, name=f"digits/{split}",
                        augment=digits_augment() if augment else None)


class _GrayArray:
    """``i -> PIL "L" image`` of a ``(N, H, W)`` uint8 array (a class, so datasets pickle)."""

    def __init__(self, gray: np.ndarray):
        self.gray = gray

    def __call__(self, i: int) -> Image.Image:
        return Image.fromarray(self.gray[i], mode="L")


# -- Fashion-MNIST ----------------------------------------------------------------------------

FASHION_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")


def _read_idx(path: str) -> np.ndarray:
    """An IDX file (``.gz`` or not): big-endian dims after a 4-byte magic, then uint8 data."""
    import gzip

    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise SplitterError(f"{path} is not an IDX file of unsigned bytes; reinstall it with "
                            f"apt-get install --reinstall dataset-fashion-mnist")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(dims))


def fashion_mnist(split: str = "train", input_size: Sequence[int] = (3, 28, 28), *,
                  root: str | None = None, limit: int | None = None,
                  augment: bool = False) -> SourceImages:
    """Fashion-MNIST: ``"train"`` (60,000) or ``"test"`` (10,000) 28×28 gray images.

    Read from ``root`` (default ``$SPLITTER_FASHION_MNIST`` or :data:`FASHION_DIR`, where
    ``apt-get install dataset-fashion-mnist`` puts it); ``limit`` keeps the first ``limit``
    images (the files' own order). Preprocessing as :func:`digits_transform`.
    """
    root = root or os.environ.get("SPLITTER_FASHION_MNIST", FASHION_DIR)
    if split not in ("train", "test"):
        raise SplitterError(f"fashion-mnist split must be 'train' or 'test', not {split!r}")
    prefix = "train" if split == "train" else "t10k"
    paths = []
    for what in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        cands = [os.path.join(root, f"{prefix}-{what}{ext}") for ext in (".gz", "")]
        found = [c for c in cands if os.path.exists(c)]
        if not found:
            raise SplitterError(f"Fashion-MNIST is not installed (no {cands[0]}); install it with "
                                f"`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or "
                                f"put the four IDX files in a directory and set "
                                f"SPLITTER_FASHION_MNIST to it")
        paths.append(found[0])
    images, labels = _read_idx(paths[0]), _read_idx(paths[1]).astype(np.int64)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return SourceImages(_GrayArray(np.ascontiguousarray(images)), labels,
                        digits_transform(input_size), list(FASHION_CLASSES), cache=True,
                        name=f"fashion-mnist/{split}", augment=digits_augment() if augment else None)


# -- held-out part of one dataset ---------------------------------------------------------------

class _Part(Dataset):
    """Some indices of a dataset, keeping ``raw``/``transform``/``targets`` when it has them."""

    def __init__(self, data: Dataset, indices: Sequence[int], name: str):
        self.data, self.indices, self.name = data, [int(i) for i in indices], name
        if hasattr(data, "targets"):
            self.targets = [data.targets[i] for i in self.indices]
        if hasattr(data, "transform"):
            self.transform = data.transform
        if hasattr(data, "raw"):
            self.raw = lambda i: data.raw(self.indices[i])

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "raw"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if hasattr(self.data, "raw"):
            self.raw = lambda i: self.data.raw(self.indices[i])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.data[self.indices[i]]


def holdout(data: Dataset, fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """``(train, test)`` parts of one dataset: a seeded random ``fraction`` held out."""
    n = len(data)
    if n < 2:
        raise SplitterError(f"cannot hold out a test part of a dataset of {n} sample(s); give "
                            f"separate train and test data")
    perm = np.random.default_rng(seed).permutation(n)
    k = max(1, int(round(n * fraction)))
    name = getattr(data, "name", type(data).__name__)
    return (_Part(data, np.sort(perm[k:]), f"{name}/train"),
            _Part(data, np.sort(perm[:k]), f"{name}/held-out"))


# -- image folders ----------------------------------------------------------------------------

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def image_folder(root: str, model: nn.Module | str | None = None, *,
                 input_size: Sequence[int] | None = None) -> SourceImages:
    """``root/<class>/<image>`` with ``model``'s preprocessing (timm data config); a folder
    of images without class sub-folders gives unlabelled samples (label -1).

    ``model`` supplies the mean/std/interpolation/crop (``timm.data.resolve_data_config``);
    ``input_size`` overrides its input size.
    """
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder

    if not os.path.isdir(root):
        raise SplitterError(f"image folder {root!r} does not exist; give a directory with one "
                            f"sub-folder of images per class, or 'digits'")
    if not any(e.is_dir() for e in os.scandir(root)):  # no classes: unlabelled images
        paths = sorted(e.path for e in os.scandir(root)
                       if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
        if not paths:
            raise SplitterError(f"image folder {root!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}) "
                                f"and no class sub-folders")
        targets, classes = [-1] * len(paths), []  # -1: no label; fit distils from the teacher
    else:
        folder = ImageFolder(root)
        paths, targets, classes = [p for p, _ in folder.samples], folder.targets, folder.classes
    if isinstance(model, str):
        from splitter.compile.trace import load_model

        model = load_model(model)[0]
    args: dict[str, Any] = {"input_size": tuple(input_size)} if input_size else {}
    cfg = resolve_data_config(args, model=model) if model is not None else resolve_data_config(args)
    transform = create_transform(**cfg)

    return SourceImages(_FolderImages(paths), targets, transform, classes, name=root)


class _FolderImages:
    """``i -> PIL RGB image`` read from the i-th file (a class, so datasets pickle)."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)

    def __call__(self, i: int) -> Image.Image:
        with Image.open(self.paths[i]) as im:
            return im.convert("RGB")


def as_dataset(data: str | Dataset, *, split: str = "train", model: nn.Module | str | None = None,
               input_size: Sequence[int] | None = None, seed: int = 0) -> Dataset:
    """``"digits"``, ``"fashion-mnist"`` (its ``split``), a directory (``DIR/split`` when it
    exists) or a Dataset."""
    if isinstance(data, Dataset):
        return data
    if data == "digits":
        return digits(split, input_size or (3, 32, 32), seed=seed)
    if data in ("fashion-mnist", "fashion_mnist", "fashionmnist"):
        return fashion_mnist("train" if split == "train" else "test", input_size or (3, 28, 28))
    sub = os.path.join(data, split)
    return image_folder(sub if os.path.isdir(sub) else data, model, input_size=input_size)
