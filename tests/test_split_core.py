"""Core split behaviour on a few models: exactness, cut points, names, errors."""

from __future__ import annotations

import copy

import pytest
import timm
import torch

import splitter
from splitter.errors import InputShapeError, ModelError, TraceError, UnknownLayerError


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False).eval()


def test_exact_at_every_stage_and_ends(resnet):
    g = splitter.trace(resnet, (3, 64, 64))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = resnet(x)
        for at in ["input", *g.stage_names(), "output", "layer2.0.conv1"]:
            s = splitter.split(g, at)
            assert torch.equal(s.tail(s.head(x)), ref), at


def test_cut_points_cover_ends_and_stages(resnet):
    g = splitter.trace(resnet, (3, 64, 64))
    cuts = g.cut_points()
    assert cuts[0].name == "input" and cuts[-1].name == "output"
    assert [c.index for c in cuts] == sorted(c.index for c in cuts)
    by_name = {c.name: c for c in cuts}
    assert by_name["layer1"].tensors[0].shape == (64, 16, 16)  # per sample
    assert by_name["layer1"].nbytes == 64 * 16 * 16 * 4
    assert by_name["output"].tensors[0].shape == (1000,)
    # inside a residual block two tensors cross: the branch and the shortcut
    assert len(by_name["layer2.0.conv1"].tensors) == 2
    assert g.stage_names() == ["act1", "layer1", "layer2", "layer3", "layer4"]


def test_multi_tensor_cut_head_returns_every_tensor(resnet):
    s = splitter.split(resnet, "layer2.0.bn1", input_shape=(3, 64, 64))
    wire = s.head(torch.randn(1, 3, 64, 64))
    assert isinstance(wire, tuple) and len(wire) == len(s.cut.tensors) == 2
    assert [tuple(w.shape[1:]) for w in wire] == [t.shape for t in s.cut.tensors]


def test_fx_node_name_and_alias_accepted(resnet):
    g = splitter.trace(resnet, (3, 64, 64))
    c = g.cut("layer1")
    assert g.cut(c.node) == c
    assert g.cut("layer1.1") == c  # the last block ends where the stage does


def test_user_model_is_not_modified(resnet):
    before = copy.deepcopy(resnet.state_dict())
    s = splitter.split(resnet, "layer1", input_shape=(3, 64, 64))
    for p in s.parameters():
        p.data.add_(1.0)
    after = resnet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_unknown_layer_lists_five_closest(resnet):
    g = splitter.trace(resnet, (3, 64, 64))
    with pytest.raises(UnknownLayerError) as e:
        g.cut("layer5")
    assert len(e.value.suggestions) == 5
    assert "layer4" in e.value.suggestions
    assert "layer4" in str(e.value)


def test_wrong_input_shape_says_expected(resnet):
    s = splitter.split(resnet, "layer1", input_shape=(3, 64, 64))
    with pytest.raises(InputShapeError, match=r"\(B, 3, 64, 64\)"):
        s(torch.randn(3, 64, 64))


class _ShapeDependent(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        y = self.conv(x)
        if y.shape[-1] > 4:  # Python control flow on a shape: FX cannot trace it, export can
            y = y * 2
        return self.fc(y.mean((2, 3)))


def test_fallback_to_export_when_fx_fails():
    m = _ShapeDependent().eval()
    g = splitter.trace(m, (3, 8, 8))
    assert g.frontend == "export"
    assert "control flow" in g.attempts["fx"]
    x = g.example_input
    s = splitter.split(g, g.cut_points()[1].name)
    with torch.no_grad():
        assert torch.equal(s.tail(s.head(x)), m(x))
    assert g.cut("conv").tensors[0].shape == (4, 6, 6)  # module paths survive export


class _Untraceable(torch.nn.Module):
    def forward(self, x):
        return torch.from_numpy(x.numpy() * 2)  # leaves torch entirely


def test_untraceable_model_names_the_op_and_frontends():
    with pytest.raises(TraceError) as e:
        splitter.trace(_Untraceable(), (3, 4, 4))
    msg = str(e.value)
    assert "fx:" in msg and "export:" in msg
    assert "numpy" in msg  # the failing operation / source line is named
    assert set(e.value.attempts) == {"fx", "export"}


def test_unknown_model_name():
    with pytest.raises(ModelError, match="resnet50"):
        splitter.trace("resnet5")


def test_import_path_factory():
    g = splitter.trace("torchvision.models:resnet18", (3, 32, 32))
    assert g.cut("layer1").tensors[0].shape == (64, 8, 8)
