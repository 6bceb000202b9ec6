"""The exact plain split across the timm zoo: ``tail(head(x)) == model(x)``, bit for bit.

Each model is built with random weights at a small input, traced, and split at every
``feature_info`` stage output, at ``input`` and ``output``, at the cuts 1/4, 1/2 and 3/4 of
the way through its cut list and at a multi-tensor cut. The reference is the *original*
module run eagerly, not the traced graph. The unmarked set covers one or more models of
each family the issue names and runs in about a minute on one core; ``--runslow`` adds
the rest (``bench/zoo_coverage.py`` covers one model of every timm family).
"""

from __future__ import annotations

import pytest
import timm
import torch

import splitter
from splitter.errors import InputShapeError, UnknownLayerError
from tests._models import BatchInt

S64 = (3, 64, 64)
V64 = {"img_size": 64}  # models with a fixed input size are rebuilt for 64x64

# (timm name, create_model kwargs, input shape). Small variants, small inputs.
FAST = [
    # plain CNNs
    ("resnet18", {}, S64),
    ("vgg11", {"mlp_ratio": 1 / 16}, S64),  # a 256-wide pre-logits conv: 21M weights, not 133M
    ("regnetx_002", {}, S64),
    ("densenet121", {}, S64),
    ("dla46_c", {}, S64),  # multi-branch trees
    ("repvgg_a0", {}, S64),
    ("cs3darknet_focus_s", {}, S64),
    ("resnest14d", {}, S64),
    ("nf_regnet_b0", {}, S64),
    # mobile nets
    ("mobilenetv2_050", {}, S64),
    ("mobilenetv3_small_050", {}, S64),
    ("efficientnet_b0", {}, S64),
    ("ghostnet_050", {}, S64),
    ("mnasnet_small", {}, S64),
    ("mobilevit_xxs", {}, S64),
    ("hgnetv2_b0", {}, S64),
    # ConvNeXt and other modern conv nets
    ("convnext_atto", {}, S64),
    ("edgenext_xx_small", {}, S64),
    ("inception_next_atto", {}, S64),
    ("starnet_s050", {}, S64),
    ("fastvit_t8", {}, S64),
    # transformers with a fixed input size
    ("vit_tiny_patch16_224", V64, S64),
    ("deit_tiny_distilled_patch16_224", V64, S64),  # two heads, averaged in eval
    ("swin_tiny_patch4_window7_224", V64, S64),  # NHWC inside, leaf blocks
    ("mixer_s16_224", V64, S64),
    ("xcit_nano_12_p16_224", V64, S64),  # ints from x.shape live across every block
    ("levit_128s", V64, S64),
    # hybrids and metaformers
    ("maxvit_pico_rw_256", V64, S64),
    ("efficientformerv2_s0", V64, S64),
    ("poolformerv2_s12", {}, S64),
    ("pvt_v2_b0", {}, S64),
    ("tiny_vit_5m_224", {}, S64),
    # multi-branch
    ("hrnet_w18_small", {}, S64),
]

SLOW = [
    ("vgg11", {}, S64),  # the full 133M-weight pre-logits
    ("resnet50", {}, S64),
    ("efficientnet_lite0", {}, S64),
    ("mobilenetv3_large_100", {}, S64),
    ("convnext_tiny", {}, S64),
    ("cait_xxs24_224", V64, S64),
    ("coat_lite_tiny", V64, S64),
    ("coat_tiny", V64, S64),  # the batch size B = x.shape[0] lives across the serial blocks
    ("crossvit_tiny_240", {}, (3, 240, 240)),
    ("coatnet_nano_rw_224", V64, S64),
    ("swinv2_tiny_window8_256", V64, S64),
    ("efficientformer_l1", {}, (3, 224, 224)),
    ("beit_base_patch16_224", V64, S64),
    ("eva02_tiny_patch14_224", {"img_size": 70}, (3, 70, 70)),  # 5x5 patches of 14
    ("twins_svt_small", {}, S64),  # timm's feature_info names 'block.i': no such modules
    ("davit_tiny", {}, S64),
    ("focalnet_tiny_srf", {}, S64),
    ("gcvit_xxtiny", V64, S64),
    ("volo_d1_224", V64, S64),
    ("sequencer2d_s", {}, S64),
    ("inception_v3", {}, (3, 96, 96)),
    ("nasnetalarge", {}, S64),
    ("dpn48b", {}, S64),
    ("tresnet_m", {}, S64),
    ("hrnet_w18", {}, S64),
    ("dla34", {}, S64),
    ("vit_small_patch16_224", V64, S64),
    ("naflexvit_base_patch16_gap", V64, S64),  # a None attention mask lives across the blocks
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Small models on a shared 2-core runner: a second intra-op thread only adds contention
    # (resnet18's check takes ~1 s on one thread and ~7 s on two under load).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _picks(g: splitter.Graph) -> list[str]:
    """Stage outputs, both ends, cuts at 1/4, 1/2, 3/4 and (if any) a multi-tensor cut."""
    cuts = g.cut_points()
    picks = ["input", *g.stage_names(), "output"]
    picks += [cuts[len(cuts) * k // 4].name for k in (1, 2, 3)]
    multi = [c.name for c in cuts if len(c.tensors) > 1]
    if multi:
        picks.append(multi[len(multi) // 2])
    return list(dict.fromkeys(picks))


def _check_exact(name: str, kwargs: dict, shape: tuple[int, ...]) -> splitter.Graph:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    g = splitter.trace(model, shape)

    # Every feature_info stage the model has is a cut point (names timm gets wrong aside).
    modules = {n for n, _ in model.named_modules()}
    stage_cuts = {g.cut(m).name for m in g.feature_modules if m in modules}  # raises if not a cut
    if stage_cuts:
        assert set(g.stage_names()) == stage_cuts
    else:  # timm names no real module (twins: "block.0", a stage end inside forward): the
        # stages are the top-level children instead (Graph.stages, rule 2)
        children = {n for n, _ in model.named_children()}
        assert g.stage_names() and {n.split(".")[0] for n in g.stage_names()} <= children

    # fx graphs take any batch size (check one other than traced); export's are fixed.
    batch = 2 if g.frontend == "fx" else g.example_input.shape[0]
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
        for at in _picks(g):
            s = splitter.split(g, at)
            out = s.tail(s.head(x))
            assert out.shape == ref.shape and torch.equal(out, ref), f"{name} at {at!r}"
    return g


@pytest.mark.parametrize("name,kwargs,shape", FAST, ids=[m[0] for m in FAST])
def test_exact_split_zoo(name, kwargs, shape):
    _check_exact(name, kwargs, shape)


@pytest.mark.slow
@pytest.mark.parametrize("name,kwargs,shape", SLOW, ids=[m[0] for m in SLOW])
def test_exact_split_zoo_slow(name, kwargs, shape):
    _check_exact(name, kwargs, shape)


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64).eval()


def test_vit_wrong_input_size_names_the_traced_shape(vit):
    s = splitter.split(vit, "blocks.5", input_shape=S64)
    with pytest.raises(InputShapeError, match=r"\(B, 3, 64, 64\)"):
        s(torch.randn(1, 3, 32, 32))  # the patch grid is fixed: fails deep inside timm
    with pytest.raises(InputShapeError, match=r"\(B, 3, 64, 64\)"):
        s(torch.randn(3, 64, 64))  # no batch dimension
    with torch.no_grad():
        x = torch.randn(1, *S64)
        assert torch.equal(s(x), vit(x))


def test_vit_unknown_layer_lists_five_closest(vit):
    g = splitter.trace(vit, S64)
    with pytest.raises(UnknownLayerError) as e:
        g.cut("blocks.12")
    assert len(e.value.suggestions) == 5
    assert all(sugg in str(e.value) for sugg in e.value.suggestions)
    assert any(sugg.startswith("blocks.1") for sugg in e.value.suggestions)


def test_shape_ints_across_a_cut_are_recreated_and_guarded():
    # XCiT computes (Hp, Wp) from x.shape once and reads them in every block: the tail holds
    # the traced values, so the cut is fixed to the traced (C, H, W) and says so.
    torch.manual_seed(0)
    m = timm.create_model("xcit_nano_12_p16_224", pretrained=False, img_size=64).eval()
    g = splitter.trace(m, S64)
    c = g.cut("blocks.3")
    assert c.fixed_shape and {s.how for s in c.scalars} == {"const"}
    assert sorted(s.value for s in c.scalars) == [4, 4]  # 64 / 16 patches each way
    s = splitter.split(g, "blocks.3")
    x = torch.randn(3, *S64)  # another batch size is fine
    with torch.no_grad():
        assert torch.equal(s(x), m(x))
        with pytest.raises(InputShapeError, match=r"\(B, 3, 64, 64\)"):
            s(torch.randn(1, 3, 96, 96))  # XCiT itself would run at 96: the split must not
        with pytest.raises(ValueError, match=r"traced for \(B, 16, 128\)"):
            s.tail(s.head(torch.randn(1, 3, 96, 96)))  # the tail guards its wire too


def test_batch_int_across_a_cut_is_read_off_the_wire():
    m = BatchInt().eval()
    g = splitter.trace(m, (3, 8, 8))
    c = g.cut("stem")
    assert [(s.how, s.value) for s in c.scalars] == [("size", (0, 0))]
    assert not c.fixed_shape
    s = splitter.split(g, "stem")
    with torch.no_grad():
        for shape in [(3, 3, 8, 8), (2, 3, 12, 12)]:  # any batch, any size: nothing is baked
            x = torch.randn(*shape)
            assert torch.equal(s(x), m(x))


class _Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
                                          torch.nn.Conv2d(8, 4, 1))

    def forward(self, x):
        return self.blocks(self.stem(x))


class _Wrapped(torch.nn.Module):
    """feature_info named relative to the trunk, as gemma4_vit does (``blocks.i``)."""

    def __init__(self):
        super().__init__()
        self.encoder = _Encoder()
        self.feature_info = [{"module": "blocks.0"}, {"module": "blocks.2"}, {"module": "nope.1"}]

    def forward(self, x):
        return self.encoder(x).mean((2, 3))


def test_feature_info_relative_to_a_trunk_is_resolved():
    g = splitter.trace(_Wrapped().eval(), (3, 8, 8))
    assert g.stage_names() == ["encoder.blocks.0", "encoder.blocks.2"]  # "nope.1": no module
