"""Costs: figures equal to independently known numbers, and prefix sums equal to recounting."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import splitter
from bottlenecks.base import Bottleneck, BottleneckOutput
from splitter.compile.costs import CostReport, cost_report, cost_table, dtype_bits, report_at


@pytest.fixture(scope="module")
def r50():
    return splitter.trace("resnet50")  # 224x224, ~3 s: shared by the tests below


def test_resnet50_whole_model_matches_published_figures(r50):
    c = splitter.split(r50, "output").costs
    assert isinstance(c, CostReport)
    assert c.encoder_params == 25_557_032
    assert abs(c.encoder_macs - 4.089e9) / 4.089e9 < 0.005
    assert c.encoder_flops == 2 * c.encoder_macs
    assert (c.tail_params, c.tail_macs, c.tail_flops) == (0, 0, 0)
    assert c.cut_bytes == c.payload_bytes == 1000 * 4
    # Eq. 1: every parameter and buffer by its dtype, from a fresh copy of the model.
    ref = timm.create_model("resnet50").state_dict()
    assert c.encoder_bits == sum(t.numel() * t.element_size() * 8 for t in ref.values())
    assert c.table_bits == 0


def test_resnet50_input_split_sends_the_image(r50):
    c = report_at(r50, r50.cut("input"))
    assert (c.encoder_params, c.encoder_bits, c.encoder_macs) == (0, 0, 0)
    assert c.tail_params == 25_557_032
    assert c.cut_bytes == 3 * 224 * 224 * 4
    assert [t.shape for t in c.tensors] == [(3, 224, 224)]


def test_resnet50_stage_costs_add_up(r50):
    t = cost_table(r50.gm)
    assert cost_table(r50.gm) is t  # built once per graph
    for name in r50.stage_names():
        c = report_at(r50, r50.cut(name), table=t)
        assert c.encoder_params + c.tail_params == 25_557_032  # no weight is read on both sides
        assert c.encoder_flops + c.tail_flops == t.total.flops
    l1 = report_at(r50, r50.cut("layer1"))
    m = timm.create_model("resnet50")
    stem_l1 = sum(p.numel() for k, p in m.named_parameters() if k.split(".")[0] in ("conv1", "bn1", "layer1"))
    assert l1.encoder_params == stem_l1


def test_vit_small_counts_attention():
    g = splitter.trace("vit_small_patch16_224")
    c = report_at(g, g.cut("output"))
    # 4.60 GMACs with attention; the matmuls alone would give ~4.25.
    assert abs(c.encoder_macs - 4.60e9) / 4.60e9 < 0.01
    assert c.encoder_params == sum(p.numel() for p in timm.create_model("vit_small_patch16_224").parameters())


def test_mobilenetv3_large():
    g = splitter.trace("mobilenetv3_large_100")
    c = report_at(g, g.cut("output"))
    assert abs(c.encoder_macs - 0.217e9) / 0.217e9 < 0.01


def test_dtype_bits():
    want = {torch.float32: 32, torch.float16: 16, torch.bfloat16: 16, torch.int8: 8,
            torch.uint8: 8, torch.bool: 1, torch.int32: 32, torch.int64: 64}
    assert {d: dtype_bits(d) for d in want} == want


class _NoIntBuffers(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.conv2(self.norm(self.conv(x)).relu()).mean((2, 3)))


def test_fp16_head_is_half_the_bits_of_its_fp32_twin():
    m = _NoIntBuffers().eval()
    g32 = splitter.trace(m, (3, 16, 16))
    g16 = splitter.trace(m, (3, 16, 16))
    g16.gm.half()  # the same weights stored as fp16 after tracing
    for at in ("norm", "conv2", "output"):
        c32, c16 = splitter.split(g32, at).costs, splitter.split(g16, at).costs
        assert c16.encoder_params == c32.encoder_params > 0
        assert c16.encoder_bits * 2 == c32.encoder_bits
        assert c16.encoder_macs == c32.encoder_macs


def test_fp16_resnet_keeps_int64_batch_counters():
    g = splitter.trace("resnet18", (3, 32, 32))
    full = report_at(g, g.cut("output")).encoder_bits
    n_int = sum(b.numel() for b in g.gm.buffers() if not b.is_floating_point())
    g.gm.half()
    half = report_at(g, g.cut("output")).encoder_bits
    assert half == (full - 64 * n_int) // 2 + 64 * n_int


# -- prefix sums == recounting each split from scratch -------------------------------------

def _read_tensors(gm: torch.fx.GraphModule) -> list[torch.Tensor]:
    """Parameters and buffers the graph actually reads (call_module / get_attr), deduplicated."""
    seen: dict[int, torch.Tensor] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            mod = gm.get_submodule(n.target)
            for t in [*mod.parameters(), *mod.buffers()]:
                seen.setdefault(id(t), t)
        elif n.op == "get_attr":
            obj = gm
            for part in str(n.target).split("."):
                obj = getattr(obj, part)
            if isinstance(obj, torch.Tensor):
                seen.setdefault(id(obj), obj)
    return list(seen.values())


def _recount(g, name):
    s = splitter.split(g, name)
    s.requires_grad_(False)  # FlopCounterMode's module tracker trips on views of parameters
    x = g.example_input
    with torch.no_grad(), FlopCounterMode(display=False) as fh:
        wire = s.head(x)
    with torch.no_grad(), FlopCounterMode(display=False) as ft:
        s.tail(wire)
    params = {id(p) for p in s.parameters()}
    head, tail = _read_tensors(s.head), _read_tensors(s.tail)
    return dict(
        encoder_flops=fh.get_total_flops(), tail_flops=ft.get_total_flops(),
        encoder_params=sum(t.numel() for t in head if id(t) in params),
        tail_params=sum(t.numel() for t in tail if id(t) in params),
        encoder_bits=sum(t.numel() * dtype_bits(t.dtype) for t in head),
    ), s


def _check_every_cut(g, check_module_params=False):
    for cut in g.cut_points():
        want, s = _recount(g, cut.name)
        got = report_at(g, cut).model_dump(include=set(want))
        assert got == want, cut.name
        if check_module_params:  # no get_attr constants: the modules hold exactly what they read
            assert want["encoder_params"] == sum(p.numel() for p in s.head.parameters())


class _Tied(nn.Module):
    """One conv applied before and after a residual block: a weight read on both sides."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Conv2d(4, 4, 3, padding=1)
        self.stem = nn.Conv2d(3, 4, 1)
        self.mid = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        y = self.shared(self.stem(x))
        y = y + self.mid(y)
        return self.head(self.shared(y).mean((2, 3)))


def test_prefix_sums_equal_recount_cnn():
    from timm.models.resnet import BasicBlock, ResNet

    g = splitter.trace(ResNet(BasicBlock, [1, 1, 1, 1]).eval(), (3, 32, 32))  # 50 cuts
    _check_every_cut(g, check_module_params=True)


def test_prefix_sums_equal_recount_tied_weights_count_on_both_sides():
    g = splitter.trace(_Tied().eval(), (3, 8, 8))
    _check_every_cut(g)
    c = report_at(g, g.cut("mid"))
    shared = 4 * 4 * 9 + 4
    total = sum(p.numel() for p in _Tied().parameters())
    assert c.encoder_params + c.tail_params == total + shared


def test_prefix_sums_equal_recount_vit_constants():
    m = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=10).eval()
    g = splitter.trace(m, (3, 32, 32))
    _check_every_cut(g)  # cls_token / pos_embed are get_attr constants read mid-graph


class _ShapeBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.conv(x)
        if y.shape[-1] > 4:  # FX cannot trace this: torch.export (get_attr weights) does
            y = y * 2
        return self.fc(y.mean((2, 3)))


def test_prefix_sums_equal_recount_export_frontend():
    g = splitter.trace(_ShapeBranch().eval(), (3, 8, 8))
    assert g.frontend == "export"
    _check_every_cut(g)


# -- bottlenecks -----------------------------------------------------------------------------

class _FakeCodec(Bottleneck):
    """A 1x1 conv encoder, an int32 coder table and a 1x1 conv decoder: counts known by hand."""

    def __init__(self, in_shape, layout="nchw", out_shape=None, **_):
        super().__init__(in_shape, layout, out_shape)
        c_in, c_out = in_shape[0], self.out_shape[0]
        self.stride = in_shape[1] // self.out_shape[1]
        self.encoder = nn.Conv2d(c_in, 2, self.stride, stride=self.stride)
        self.decoder = nn.Conv2d(2, c_out, 1)
        self.register_buffer("cdf", torch.zeros(7, 11, dtype=torch.int32))

    def table_tensors(self):
        return {"cdf": self.cdf}

    def forward(self, x):
        return BottleneckOutput(self.decode(self.encode(x)), {})

    def encode(self, x):
        return self.encoder(x).round().to(torch.int16)

    def decode(self, symbols):
        return self.decoder(symbols.float())

    def compress(self, symbols):
        return [[s.numpy().tobytes()] for s in symbols]

    def decompress(self, strings, spatial):
        import numpy as np

        return torch.stack([torch.from_numpy(np.frombuffer(s[0], dtype=np.int16).copy()).view(*spatial)
                            for s in strings])


def test_bottleneck_adds_encoder_tables_and_flops():
    g = splitter.trace(_NoIntBuffers().eval(), (3, 16, 16))
    plain = report_at(g, g.cut("norm"))
    bn = _FakeCodec((8, 16, 16))
    s = splitter.split(g, "norm", bottleneck=bn)
    c = s.costs
    enc = 8 * 2 + 2
    assert c.encoder_params == plain.encoder_params + enc
    assert c.encoder_bits == plain.encoder_bits + 32 * enc
    assert c.table_bits == 7 * 11 * 32
    assert c.encoder_macs == plain.encoder_macs + 8 * 2 * 16 * 16
    assert c.tail_params == plain.tail_params + 2 * 8 + 8
    assert c.tail_macs == plain.tail_macs + 2 * 8 * 16 * 16
    assert c.symbol_bytes == c.payload_bytes == 2 * 16 * 16 * 2 and not c.payload_measured
    assert c.cut_bytes == plain.cut_bytes == 8 * 16 * 16 * 4


def test_replace_mode_counts_only_the_learned_encoder():
    g = splitter.trace(_NoIntBuffers().eval(), (3, 16, 16))
    bn = _FakeCodec((3, 16, 16), out_shape=(8, 16, 16))  # image -> the cut's 8x16x16
    s = splitter.split(g, "norm", bottleneck=bn, mode="replace")
    c = s.costs
    assert c.encoder_params == 3 * 2 + 2
    assert c.encoder_macs == 3 * 2 * 16 * 16
    assert c.tail_params == report_at(g, g.cut("norm")).tail_params + 2 * 8 + 8


def test_payload_measured_with_inputs():
    g = splitter.trace(_NoIntBuffers().eval(), (3, 16, 16))
    s = splitter.split(g, "conv2", bottleneck="identity", dtype="fp16")
    x = torch.randn(3, 3, 16, 16)
    c = cost_report(s, x)
    assert c.payload_measured
    assert c.payload_bytes == sum(len(s.encode(x[i:i + 1])) for i in range(3)) / 3
    assert c.symbol_bytes == 8 * 16 * 16 * 2 < c.payload_bytes < c.symbol_bytes + 64  # small header
    # A plain split has no coder: its payload is the raw cut, not measured.
    p = cost_report(splitter.split(g, "conv2"), x)
    assert not p.payload_measured and p.payload_bytes == p.cut_bytes == 8 * 16 * 16 * 4
