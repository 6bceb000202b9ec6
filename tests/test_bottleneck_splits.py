"""Bottlenecks inside real graphs: device bytes -> server output reproduces the in-process pass.

For every kind, on ResNet-50, a ViT and a Swin at an early, middle and late cut:
``split.decode(split.encode(x))`` equals ``split(x)`` (the in-process forward pass through the
quantized bottleneck) and the symbols the server decodes are the head's symbols, bit for bit.
"""

from __future__ import annotations

import pytest
import timm
import torch

import bottlenecks
import splitter
from splitter.deploy import payload
from splitter.errors import BottleneckError, CutError
from tests._models import BatchInt

LOSSLESS = ["identity", "crbq", "entropy", "hyperprior"]
LOSSY = ["jpeg", "webp"]  # the codec is lossy inside compress; the server must match in-process coding

MODELS = {
    # name -> (factory kwargs, input shape, early / middle / late cut)
    "resnet50": ({}, (3, 64, 64), ["layer1", "layer2", "layer3"]),
    "vit_tiny_patch16_224": ({"img_size": 64}, (3, 64, 64), ["blocks.1", "blocks.5", "blocks.10"]),
    "swin_tiny_patch4_window7_224": ({"img_size": 64, "window_size": 4}, (3, 64, 64),
                                     ["layers.0", "layers.1", "layers.2"]),
}


@pytest.fixture(scope="module", params=list(MODELS))
def traced(request):
    name = request.param
    kwargs, shape, cuts = MODELS[name]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    return splitter.trace(model, shape), cuts


def _options(kind: str) -> dict:
    return {"crbq": {"channels": 8}, "entropy": {"channels": 8}, "hyperprior": {"channels": 8},
            "jpeg": {"quality": 80}, "webp": {"quality": 80}}.get(kind, {})


@pytest.mark.parametrize("kind", LOSSLESS + LOSSY)
def test_payload_reproduces_in_process_pass(traced, kind):
    graph, cuts = traced
    x2 = torch.randn(2, *graph.input_shape, generator=torch.Generator().manual_seed(1))
    for at in cuts:
        s = splitter.split(graph, at, bottleneck=kind, **_options(kind))
        s.bottleneck.update()
        for x in (x2, x2[:1]):  # the long form, and one sample in the short form
            data = s.encode(x)
            assert bool(data[3] & payload.SHORT) == (len(x) == 1)
            with torch.no_grad():
                symbols = s.head(x)
                if kind in LOSSY:  # what an in-process pass through the codec gives
                    coded = s.bottleneck.decompress(s.bottleneck.compress(symbols),
                                                    s.bottleneck.spatial(symbols))
                    expected = s.tail(coded)
                else:
                    assert torch.equal(s.decode_symbols(data), symbols), (kind, at)
                    expected = s(x)
                out = s.decode(data)
            assert out.shape == (len(x), 1000)
            assert torch.equal(out, expected), (kind, at, len(x))


def test_insert_keeps_original_head_layers(traced):
    graph, cuts = traced
    s = splitter.split(graph, cuts[0], bottleneck="entropy", channels=8)
    plain = splitter.split(graph, cuts[0])
    x = torch.randn(1, *graph.input_shape)
    with torch.no_grad():  # the device still runs the model's own layers up to the cut
        assert torch.equal(s.pre(x), plain.head(x))


def test_entropic_student_replace_design():
    s = splitter.split("resnet50", at="layer1", bottleneck="entropy", mode="replace", channels=24)
    bn = s.bottleneck
    enc = sum(p.numel() for p in bn.encoder.parameters())
    dec = sum(p.numel() for p in bn.decoder.parameters())
    assert enc == 138_672
    assert dec == 1_164_032
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        feat = bn.decode(bn.encode(x))
        assert feat.shape == (1, 256, 56, 56)
        assert s(x).shape == (1, 1000)
    # The head is the learned encoder alone: none of ResNet-50's own layers stay on the device.
    assert not any(n.startswith(("conv1", "layer1", "bn1")) for n, _ in s.head.named_parameters())
    s.bottleneck.update()
    assert s.decode(s.encode(x)).shape == (1, 1000)


def test_unknown_kind_lists_registered(traced):
    graph, cuts = traced
    with pytest.raises(BottleneckError, match="entropy"):
        splitter.split(graph, cuts[0], bottleneck="entropi")


def test_too_many_channels_says_the_maximum():
    g = splitter.trace("resnet18", (3, 32, 32))
    with pytest.raises(BottleneckError, match="at most 64"):
        splitter.split(g, "layer1", bottleneck="crbq", channels=65)


def test_multi_tensor_cut_names_single_tensor_neighbours():
    g = splitter.trace("resnet18", (3, 32, 32))
    with pytest.raises(CutError, match="single-tensor") as e:
        splitter.split(g, "layer2.0.conv1", bottleneck="entropy", channels=8)
    assert "layer1" in str(e.value)


def test_registry_has_every_kind():
    bottlenecks.base.create  # noqa: B018 - import side effect
    bottlenecks._load_all()
    assert set(LOSSLESS + LOSSY) <= set(bottlenecks.REGISTRY)


def test_bottleneck_at_cut_with_batch_sized_python_value():
    # B = x.shape[0] is read after the cut: the tail takes it from the symbols on the wire.
    m = BatchInt().eval()
    s = splitter.split(m, "stem", bottleneck="crbq", channels=4, input_shape=(3, 16, 16))
    for batch in (1, 3):  # nothing batch-sized is baked into the tail
        x = torch.randn(batch, 3, 16, 16)
        with torch.no_grad():
            assert torch.equal(s.decode(s.encode(x)), s(x))
        assert s(x).shape == (batch, 8 * 8 * 8)
