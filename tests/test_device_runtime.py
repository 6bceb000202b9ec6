"""The device half runs alone and without torch; the server half decodes alone; halves of
different exports are refused; bad input is refused before any compute; a model whose
output is a dict exports and runs device -> bytes -> server.

The bundles use mode="replace" at ``layer1`` of timm's ``test_resnet`` at 64x64, whose
24x16x16 latent (6,144 symbols) is a long stream: constriction's ANS codes it on both sides.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import splitter
from splitter.deploy import coder, payload
from splitter.errors import BundleError, InputShapeError, InputValueError
from tests._torchfree import encode_without_torch

REPO = Path(__file__).resolve().parents[1]
SHAPE = (3, 64, 64)


def _split():
    torch.manual_seed(0)
    return splitter.split("test_resnet", at="layer1", bottleneck="entropy", mode="replace",
                          channels=24, input_shape=SHAPE)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    s = _split()
    d = tmp_path_factory.mktemp("device_runtime") / "bundle"
    b = splitter.export(s, d, exporter="torchscript", threads=1)
    return s, b, d


def _inputs(n=3, seed=1):
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed)).numpy()


def test_long_latent_is_coded_by_the_long_stream_coder(exported):
    s, b, _ = exported
    assert int(np.prod(b.manifest.symbols.shape)) > coder.SMALL_STREAM
    assert b.manifest.coder.format == b.device_manifest.coder.format == coder.FORMAT
    assert b.manifest.coder.payload_version == payload.VERSION


def test_device_half_alone_encodes_and_server_half_alone_decodes(exported, tmp_path):
    s, b, d = exported
    shutil.copytree(d / "device", tmp_path / "phone")  # no server file anywhere near it
    shutil.copytree(d / "server", tmp_path / "cloud")
    phone = splitter.load_bundle(tmp_path / "phone")
    assert phone.server_half is None and "server" not in os.listdir(tmp_path / "phone")
    x = _inputs()
    data = phone.device(threads=1).encode(x)
    assert data == b.device(threads=1).encode(x)  # the same bytes as the full export's device
    with pytest.raises(BundleError, match="device bundle"):
        phone.server()
    cloud = splitter.load_bundle(tmp_path / "cloud")
    with pytest.raises(BundleError, match="server bundle"):
        cloud.device()
    y = cloud.server(threads=1).decode(data)
    with torch.no_grad():
        ref = s.decode(s.encode(torch.from_numpy(x)))
    assert torch.equal(y.argmax(1), ref.argmax(1))
    assert float((y - ref).abs().max()) <= 1e-4


def test_each_half_holds_only_its_side_s_state(exported):
    from safetensors.numpy import load_file

    _, b, d = exported
    assert sorted(os.listdir(d / "device")) == ["coder.safetensors", "head.onnx", "manifest.json"]
    tables = load_file(str(d / "device" / "coder.safetensors"))
    assert sorted(tables) == ["entropy_bottleneck._cdf_length", "entropy_bottleneck._offset",
                              "entropy_bottleneck._quantized_cdf"]
    assert (d / "device" / "coder.safetensors").stat().st_size < 64 << 10
    server = load_file(str(d / "server" / "tables.safetensors"))  # decoder state, no encoder
    assert any(k.startswith("decoder.") for k in server)
    assert not any(k.startswith("encoder.") for k in server)


def test_halves_of_different_exports_are_refused(exported, tmp_path):
    s, _, d = exported
    other = tmp_path / "other"
    splitter.export(s, other, exporter="torchscript", threads=1)
    mixed = tmp_path / "mixed"
    shutil.copytree(d / "device", mixed / "device")
    shutil.copytree(other / "server", mixed / "server")
    with pytest.raises(BundleError, match="do not belong together") as e:
        splitter.load_bundle(mixed)
    assert "export_id" in str(e.value) and e.value.file == "device/manifest.json"


class _NoCompute:
    def run(self, *a, **k):
        raise AssertionError("the head ran on input that should have been refused")


@pytest.mark.parametrize("make, error, message", [
    (lambda x: x[:, :1], InputShapeError, "1 channels"),
    (lambda x: x[:, :, :32, :32], InputShapeError, "32x32"),
    (lambda x: x[None], InputShapeError, "shape"),
    (lambda x: x[:0], InputShapeError, "shape"),
    (lambda x: (x * 50).astype(np.int64), InputValueError, "not floating point"),
    (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x), InputValueError, "NaN"),
    (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 9, np.inf, x), InputValueError, "NaN/inf"),
])
def test_bad_input_is_refused_before_any_compute(exported, make, error, message):
    _, b, _ = exported
    device = b.device(threads=1)
    device._sess = _NoCompute()
    with pytest.raises(error, match=message):
        device.encode(make(_inputs(2)))


def test_one_sample_and_float64_inputs_are_accepted(exported):
    _, b, _ = exported
    device = b.device(threads=1)
    x = _inputs(1)
    assert device.encode(x[0]) == device.encode(x) == device.encode(x.astype(np.float64))
    assert device.encode(torch.from_numpy(x)) == device.encode(x)


def test_device_runtime_runs_without_torch_and_writes_the_torch_coder_s_bytes(exported, tmp_path):
    s, b, d = exported
    x = _inputs(4, seed=3)
    got = encode_without_torch(d / "device", x, tmp_path)
    # what the torch side writes: the split's bottleneck on the same (ONNX) symbols
    device, spatial = b.device(threads=1), tuple(b.manifest.symbols.spatial)
    with torch.no_grad():
        for i, data in enumerate(got[:-1]):
            sym = torch.from_numpy(device.symbols(x[i:i + 1]))
            assert data == payload.pack("entropy", spatial, s.bottleneck.compress(sym), expected=spatial)
        sym = torch.from_numpy(device.symbols(x))
        assert got[-1] == payload.pack("entropy", spatial, s.bottleneck.compress(sym), expected=spatial)
    server = b.server(threads=1)
    assert torch.equal(server.decode_symbols(got[-1]), sym)


def test_dict_output_model_exports_and_runs_with_per_output_parity(tmp_path):
    """torchvision's DeepLabv3 returns {'out': ...}: the tail.onnx output is named 'out' and
    the server hands back a dict."""
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    torch.manual_seed(0)
    model = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, aux_loss=False).eval()
    s = splitter.split(model, at="backbone.4", bottleneck="entropy", channels=8,
                       input_shape=(3, 64, 64))
    b = splitter.export(s, tmp_path / "seg", exporter="torchscript", threads=1,
                        inputs=torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    m = b.manifest
    assert m.output_structure == "dict" and [o.name for o in m.outputs] == ["out"]
    assert m.parity.passed and set(m.parity.outputs_max_abs_error) == {"out"}
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    y = b.server(threads=1).decode(b.device(threads=1).encode(x.numpy()))
    with torch.no_grad():
        ref = s.decode(s.encode(x))
    assert isinstance(y, dict) and list(y) == ["out"] and y["out"].shape == ref["out"].shape
    assert float((y["out"] - ref["out"]).abs().max()) <= 1e-3
