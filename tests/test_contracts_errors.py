"""Contracts at the edges: each bad input raises a typed error whose message names the fix,
and the options that reach a model (``--model-args``, the YAML's ``model_args``, stages) mean
the same thing from every entry point.

Small models with random weights, no network: downloads are made to fail on purpose.
"""

from __future__ import annotations

import logging
import sys
import types
import urllib.error

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import splitter
from splitter.cli import main
from splitter.cli._common import parse_model_args
from splitter.compile import trace as trace_mod
from splitter.compile.trace import load_model
from splitter.errors import BundleError, ConfigError, InputShapeError, ModelError, TraceError
from splitter.train.config import parse_config

SMALL = (3, 16, 16)


def _no_trace(*a, **k):
    raise AssertionError("must fail before tracing")


# -- checkpoints ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ten_class_file(tmp_path_factory):
    torch.manual_seed(0)
    m, _ = load_model("test_resnet", num_classes=10)
    path = tmp_path_factory.mktemp("ckpt") / "ten.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    return str(path), m.eval()


def test_checkpoint_of_another_class_count_names_keys_shapes_and_the_argument(ten_class_file):
    path, _ = ten_class_file
    with pytest.raises(ModelError) as e:
        load_model("test_resnet", checkpoint=path, num_classes=100)
    msg = str(e.value)
    assert "fc.weight: (10, 96) in the file, (100, 96) in the model" in msg
    assert "fc.bias: (10) in the file, (100) in the model" in msg
    assert "--model-args num_classes=10" in msg and "model_args: {num_classes: 10}" in msg


def test_checkpoint_loads_when_the_model_args_match(ten_class_file):
    path, ref = ten_class_file
    g = splitter.trace("test_resnet", SMALL, checkpoint=path, model_args={"num_classes": 10})
    x = torch.randn(2, *SMALL)
    with torch.no_grad():
        assert torch.equal(g.gm(x), ref(x))


def test_checkpoint_mismatch_inside_the_body_asks_for_the_training_arguments(tmp_path):
    m, _ = load_model("test_resnet", num_classes=10)
    state = {k: v.contiguous() for k, v in m.state_dict().items()}
    state["conv1.0.weight"] = torch.zeros(5, 3, 3, 3)
    save_file(state, str(tmp_path / "x.safetensors"))
    with pytest.raises(ModelError, match=r"conv1\.0\.weight: \(5, 3, 3, 3\) in the file.*"
                                         r"arguments the checkpoint was trained with"):
        load_model("test_resnet", checkpoint=str(tmp_path / "x.safetensors"), num_classes=10)


def test_split_weights_of_another_width_name_the_tensors(tmp_path):
    from splitter.train.checkpoint import load_split, save_split

    a = splitter.split("test_resnet", at="layer2", bottleneck="crbq", channels=4, input_shape=SMALL)
    b = splitter.split("test_resnet", at="layer2", bottleneck="crbq", channels=6, input_shape=SMALL)
    save_split(a, str(tmp_path / "s.safetensors"))
    with pytest.raises(splitter.SplitterError, match=r"encoder\.weight: \(4, 48, 1, 1\) in the file, "
                                                     r"\(6, 48, 1, 1\) in the split.*channels="):
        load_split(b, str(tmp_path / "s.safetensors"))


# -- no network ------------------------------------------------------------------------------

def test_pretrained_without_network_says_to_pass_a_checkpoint(tmp_path):
    # conftest sets HF_HUB_OFFLINE=1; an empty cache dir makes the miss certain.
    with pytest.raises(ModelError) as e:
        load_model("test_resnet", pretrained=True, cache_dir=str(tmp_path))
    msg = str(e.value)
    assert "cannot be downloaded here" in msg and "--checkpoint FILE" in msg
    assert "leave out --pretrained" in msg


def test_pretrained_without_network_from_the_cli(tmp_path, capsys):
    rc = main(["points", "test_resnet", "--pretrained", "--input-size", "3,16,16",
               "--model-args", f"cache_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot be downloaded here" in err and "--checkpoint FILE" in err
    assert "Traceback" not in err


@pytest.fixture
def fake_zoo(monkeypatch):
    zoo = types.ModuleType("fake_zoo")

    def downloading(weights="DEFAULT"):
        if weights is not None:
            raise urllib.error.URLError("[Errno -2] Name or service not known")
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))

    def needs(num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(12, num_classes))

    zoo.downloading, zoo.needs = downloading, needs
    monkeypatch.setitem(sys.modules, "fake_zoo", zoo)
    return zoo


def test_factory_that_downloads_names_the_weights_argument(fake_zoo):
    with pytest.raises(ModelError, match=r"cannot be downloaded here \(URLError\).*weights=None"):
        load_model("fake_zoo:downloading")
    m, name = load_model("fake_zoo:downloading", weights=None)
    assert name == "fake_zoo:downloading" and isinstance(m, nn.Sequential)


def test_factory_with_wrong_arguments_shows_its_signature(fake_zoo):
    with pytest.raises(ModelError, match=r"num_class=3.*needs\(num_classes\)"):
        load_model("fake_zoo:needs", num_class=3)
    with pytest.raises(ModelError, match="build the module with them"):
        load_model(nn.ReLU(), num_classes=3)
    with pytest.raises(ModelError, match="weights=DEFAULT"):
        load_model("fake_zoo:downloading", pretrained=True)
    with pytest.raises(ModelError, match="checkpoint=FILE"):
        load_model(nn.ReLU(), pretrained=True)


# -- input size ------------------------------------------------------------------------------

def test_two_dim_input_size_is_rejected_before_tracing(monkeypatch):
    monkeypatch.setattr(trace_mod, "_trace_fx", _no_trace)
    monkeypatch.setattr(trace_mod, "_trace_export", _no_trace)
    with pytest.raises(InputShapeError, match=r"2 dims.*C,H,W.*--input-size 3,\d+,\d+"):
        splitter.trace("test_resnet", (224, 224))
    with pytest.raises(InputShapeError, match="positive sizes"):
        splitter.trace("test_resnet", (3, 0, 16))


def test_two_dim_input_size_from_the_cli(capsys, monkeypatch):
    monkeypatch.setattr(trace_mod, "_trace_fx", _no_trace)
    assert main(["points", "test_resnet", "--input-size", "224,224"]) == 2
    err = capsys.readouterr().err
    assert "C,H,W" in err and "--input-size 3," in err and "Traceback" not in err


def test_non_image_model_keeps_its_own_rank():
    g = splitter.trace(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)), (6,))
    assert g.input_shape == (6,)


# -- YAML --------------------------------------------------------------------------------------

BASE = "model: test_resnet\ncut: layer1\nbottleneck: {kind: entropy}\n"


def test_duplicate_yaml_keys_are_rejected_with_their_line():
    with pytest.raises(ConfigError, match=r"^f\.yaml:4: duplicate key 'cut' \(first set on line 2\)"):
        parse_config(BASE + "cut: layer2\n", "f.yaml")
    text = BASE + "stages:\n  - {kind: features, lr: 0.1,\n     lr: 0.2}\n"
    with pytest.raises(ConfigError, match=r"f\.yaml:6: duplicate key 'stages\.0\.lr' \(first set on line 5\)"):
        parse_config(text, "f.yaml")


def test_yaml_model_args_reach_a_factory():
    cfg = parse_config("model: torchvision.models:resnet18\nmodel_args: {num_classes: 7, weights: None}\n"
                       "cut: layer1\nbottleneck: {kind: entropy}\n", "f.yaml")
    assert cfg.model_args == {"num_classes": 7, "weights": None}
    g = splitter.trace(cfg.model, (3, 32, 32), model_args=cfg.model_args)
    with torch.no_grad():
        assert g.gm(torch.randn(1, 3, 32, 32)).shape == (1, 7)


# -- --model-args --------------------------------------------------------------------------------

def test_model_args_values_parse_to_python_types():
    assert parse_model_args("a=1,b=0.5,c=true,d=False,e=None,f=null,g=avg,h=-3") == \
        dict(a=1, b=0.5, c=True, d=False, e=None, f=None, g="avg", h=-3)
    import argparse

    for bad in ("a", "=1", "1a=2", ","):
        with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
            parse_model_args(bad)


def test_every_model_taking_command_takes_model_args():
    from splitter.cli import build_parser
    from splitter.cli._common import model_args

    parser = build_parser()
    for argv in (["points", "m"], ["split", "m", "--at", "x"], ["sweep", "m"], ["fit", "c.yaml"],
                 ["eval", "m"]):
        args = parser.parse_args([*argv, "--model-args", "a=1,b=None", "--model-args", "a=2"])
        assert model_args(args) == {"a": 2, "b": None}, argv


def test_model_args_reach_a_torchvision_factory_without_download(monkeypatch, capsys):
    def no_download(*a, **k):
        raise AssertionError("downloaded weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    rc = main(["points", "torchvision.models.segmentation:deeplabv3_mobilenet_v3_large",
               "--model-args", "weights_backbone=None,weights=None", "--model-args", "num_classes=5",
               "--input-size", "3,32,32", "--stages"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.splitlines()[-1].split()[:2] == ["output", "5x32x32"]


# -- stages --------------------------------------------------------------------------------------

R50_STAGES = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"]


def _points_rows(out: str) -> list[str]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("---")) + 1
    return [line.split()[0] for line in lines[start:]]


def test_torchvision_resnet_stages_are_its_top_level_children(capsys):
    g = splitter.trace("torchvision.models:resnet50", (3, 32, 32))
    assert g.stage_names() == R50_STAGES
    assert [r.point for r in splitter.sweep(g).rows] == ["input", *R50_STAGES, "output"]
    assert main(["points", "torchvision.models:resnet50", "--input-size", "3,32,32", "--stages"]) == 0
    assert _points_rows(capsys.readouterr().out) == ["input", *R50_STAGES, "output"]
    assert main(["sweep", "torchvision.models:resnet50", "--input-size", "3,32,32", "--stages"]) == 0
    assert _points_rows(capsys.readouterr().out)[:-1] == ["input", *R50_STAGES, "output"]  # + "best"


def test_hybrid_vit_stages_include_the_resnet_stem(capsys):
    args = {"img_size": 64, "depth": 2}
    g = splitter.trace("vit_small_r26_s32_224", (3, 64, 64), model_args=args)
    stem = ["patch_embed.backbone.stem.norm"] + [f"patch_embed.backbone.stages.{i}" for i in range(4)]
    assert g.stage_names() == [*stem, "blocks.0", "blocks.1"]
    assert [r.point for r in splitter.sweep(g).rows] == ["input", *g.stage_names(), "output"]
    assert main(["points", "vit_small_r26_s32_224", "--input-size", "3,64,64", "--stages",
                 "--model-args", "img_size=64,depth=2"]) == 0
    assert _points_rows(capsys.readouterr().out) == ["input", *g.stage_names(), "output"]


def test_nested_feature_info_counts_and_split_names_the_stage(capsys):
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            import timm

            self.pre = nn.Conv2d(3, 3, 1)
            self.net = timm.create_model("test_resnet", num_classes=4)

        def forward(self, x):
            return self.net(self.pre(x))

    g = splitter.trace(Wrapper().eval(), SMALL)
    assert g.stage_names() == ["net.act1", "net.layer1", "net.layer2", "net.layer3", "net.layer4"]
    assert main(["split", "test_resnet", "--input-size", "3,16,16", "--at", "layer2"]) == 0
    assert "stage 3 of 5" in capsys.readouterr().out


# -- failed traces: short errors, the dump only with --verbose ------------------------------------

class DataDependent(nn.Module):
    def forward(self, x):
        idx = torch.nonzero(x.relu() > 0.5)
        if idx.numel() == 0:  # neither frontend can trace this
            return x
        return x * 2


def test_failed_trace_is_short_and_keeps_torch_dumps_for_verbose(capfd, caplog):
    with caplog.at_level(logging.DEBUG, logger="splitter.trace"), pytest.raises(TraceError) as e:
        splitter.trace(DataDependent(), (3, 8, 8))
    msg = str(e.value)
    assert msg.count("if idx.numel() == 0:") == 2 and "test_contracts_errors.py:" in msg
    assert set(e.value.attempts) == {"fx", "export"}
    assert len(msg) < 1000
    err = capfd.readouterr().err
    assert "def forward" not in err and "Traceback" not in err
    assert "torch.export failed; it wrote:" in caplog.text and "def forward" in caplog.text


def test_verbose_flag_shows_the_dump(monkeypatch, capfd):
    zoo = types.ModuleType("dd_zoo")
    zoo.make = DataDependent
    monkeypatch.setitem(sys.modules, "dd_zoo", zoo)
    assert main(["points", "dd_zoo:make", "--input-size", "3,8,8"]) == 2
    quiet = capfd.readouterr().err
    assert quiet.count("\n") == 1 and quiet.startswith("splitter: error: could not trace dd_zoo:make")
    try:
        assert main(["points", "dd_zoo:make", "--input-size", "3,8,8", "--verbose"]) == 2
    finally:
        log = logging.getLogger("splitter")
        for h in list(log.handlers):
            log.removeHandler(h)
        log.setLevel(logging.NOTSET)
    loud = capfd.readouterr().err
    assert "def forward" in loud and "Traceback" in loud and "splitter: error:" in loud


def test_a_failing_node_raises_its_own_error_silently(capfd):
    from torch.fx.passes.shape_prop import ShapeProp

    from passes.annotate import Annotate

    assert issubclass(Annotate, ShapeProp)

    class Bad(nn.Module):
        def forward(self, x):
            return x @ torch.ones(5, 5)  # (.., 4) @ (5, 5): the op fails

    gm = torch.fx.symbolic_trace(Bad())
    with pytest.raises(RuntimeError) as e:
        Annotate(gm).run(torch.randn(2, 4))
    assert "ShapeProp error" not in str(e.value) and "cannot be multiplied" in str(e.value)
    assert capfd.readouterr().err == ""


# -- export into an existing bundle ---------------------------------------------------------------

def test_split_cli_refuses_an_existing_bundle_before_tracing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "b"
    (out / "device").mkdir(parents=True)
    (out / "device" / "manifest.json").write_text("{}")
    monkeypatch.setattr(trace_mod, "trace", _no_trace)
    rc = main(["split", "test_resnet", "--at", "layer1", "--bottleneck", "identity", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "already holds a bundle" in err and "--overwrite" in err
    from splitter.deploy.export import check_out_dir

    with pytest.raises(BundleError, match=r"overwrite=True"):
        check_out_dir(out)
    check_out_dir(out, overwrite=True)  # allowed
    check_out_dir(tmp_path / "new")  # a new directory is fine
