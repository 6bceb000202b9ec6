"""``splitter export BUNDLE --triton DIR``: the repository's structure (parsed with Triton's own
``ModelConfig`` schema when ``tritonclient[grpc]`` is installed), and the Python-backend step's
``load``/``decode`` run directly on real payloads, followed by the repository's ``model.onnx``:
together they give the bundle's server outputs bit for bit. Triton itself cannot run here."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import splitter
from splitter.cli import main
from splitter.errors import BundleError, PayloadError


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    s = splitter.split("test_resnet", at="layer2", bottleneck="crbq", channels=4, input_shape=(3, 64, 64))
    b = splitter.export(s, tmp_path_factory.mktemp("triton") / "bundle", exporter="torchscript", threads=1)
    return s, b


@pytest.fixture(scope="module")
def repo(exported, tmp_path_factory):
    out = tmp_path_factory.mktemp("repo") / "models"
    assert main(["export", str(exported[1].path), "--triton", str(out), "--name", "resnet_split"]) == 0
    return out


def _model_py(repo):
    spec = importlib.util.spec_from_file_location("triton_decode_model", repo / "resnet_split_decode/1/model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_repository_layout(exported, repo):
    b = exported[1]
    files = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
    assert files == ["resnet_split/config.pbtxt",
                     "resnet_split_decode/1/manifest.json", "resnet_split_decode/1/model.py",
                     "resnet_split_decode/1/tables.safetensors", "resnet_split_decode/config.pbtxt",
                     "resnet_split_tail/1/model.onnx", "resnet_split_tail/config.pbtxt"]
    assert (repo / "resnet_split/1").is_dir()  # the ensemble's (empty) version directory
    assert (repo / "resnet_split_tail/1/model.onnx").read_bytes() == b.read("tail.onnx")
    assert (repo / "resnet_split_decode/1/tables.safetensors").read_bytes() == b.read("tables.safetensors")


def test_configs_parse_as_triton_model_configs(exported, repo):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    def parse(name):
        return text_format.Parse((repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())

    m = exported[1].manifest
    T = model_config_pb2.DataType
    dec, tail, ens = parse("resnet_split_decode"), parse("resnet_split_tail"), parse("resnet_split")
    assert dec.backend == "python" and dec.max_batch_size == 0
    assert [(i.name, i.data_type, list(i.dims)) for i in dec.input] == [("payload", T.TYPE_STRING, [-1])]
    assert [(o.name, o.data_type, list(o.dims)) for o in dec.output] == \
        [("symbols", T.TYPE_UINT8, [-1, *m.symbols.shape])]
    assert tail.platform == "onnxruntime_onnx" and tail.max_batch_size == 0
    assert list(tail.input[0].dims) == [-1, *m.symbols.shape] and tail.input[0].data_type == T.TYPE_UINT8
    assert [(o.name, o.data_type, list(o.dims)) for o in tail.output] == [("output", T.TYPE_FP32, [-1, 1000])]
    assert ens.platform == "ensemble"
    steps = ens.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["resnet_split_decode", "resnet_split_tail"]
    assert dict(steps[0].input_map) == {"payload": "payload"}
    assert dict(steps[0].output_map) == {"symbols": "symbols"}
    assert dict(steps[1].input_map) == {tail.input[0].name: "symbols"}
    assert dict(steps[1].output_map) == {"output": "output"}
    assert [o.name for o in ens.output] == ["output"]


def test_python_backend_decode_then_tail_equals_the_bundle(exported, repo):
    import onnxruntime

    s, b = exported
    mod = _model_py(repo)
    decoder = mod.load(str(repo / "resnet_split_decode/1"))
    device, server = b.device(threads=1), b.server(threads=1)
    xs = [torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)),
          torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))]
    payloads = [device.encode(x) for x in xs]
    symbols = mod.decode(decoder, np.array(payloads, dtype=object))  # as Triton hands it: BYTES [-1]
    ref = np.concatenate([server.decode_symbols(p).numpy() for p in payloads])
    assert symbols.dtype == np.uint8 and np.array_equal(symbols, ref)
    sess = onnxruntime.InferenceSession(str(repo / "resnet_split_tail/1/model.onnx"),
                                        providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: symbols})
    assert np.allclose(out, np.concatenate([server.decode(p).numpy() for p in payloads]), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert out.argmax(1).tolist() == s(torch.cat(xs)).argmax(1).tolist()


def test_python_backend_refuses_bad_payloads_and_tampered_tables(exported, repo, tmp_path):
    import shutil

    mod = _model_py(repo)
    decoder = mod.load(str(repo / "resnet_split_decode/1"))
    with pytest.raises(PayloadError):
        mod.decode(decoder, np.array([b"SP\x02garbage"], dtype=object))
    copy = tmp_path / "v1"
    shutil.copytree(repo / "resnet_split_decode/1", copy)
    data = bytearray((copy / "tables.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "tables.safetensors").write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="sha256"):
        mod.load(str(copy))


def test_export_refuses_a_non_empty_directory(exported, repo, capsys):
    from targets.triton import write_repository

    with pytest.raises(BundleError, match="not empty"):
        write_repository(exported[1], repo)
    assert main(["export", str(exported[1].path), "--triton", str(repo)]) == 2
    assert "--overwrite" in capsys.readouterr().err
