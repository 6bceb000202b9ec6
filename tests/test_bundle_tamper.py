"""A damaged bundle never loads: every file of either half flipped, truncated or deleted in
turn raises ``BundleError`` naming that file, and loading never unpickles anything."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch

import splitter
from splitter.errors import BundleError
from targets.manifest import DeviceManifest, Manifest, dump

FILES = ["device/manifest.json", "device/head.onnx", "device/coder.safetensors",
         "server/manifest.json", "server/tail.onnx", "server/tail.pt2", "server/tables.safetensors"]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    torch.manual_seed(0)  # random weights, fixed: parity (which export checks) is then fixed too
    s = splitter.split("test_resnet", at="layer2", bottleneck="crbq", channels=4, input_shape=(3, 32, 32))
    d = tmp_path_factory.mktemp("tamper") / "bundle"
    splitter.export(s, d, exporter="torchscript", threads=1)
    return d


@pytest.fixture
def copy(bundle_dir, tmp_path):
    d = tmp_path / "b"
    shutil.copytree(bundle_dir, d)
    return d


def flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, in the middle
    path.write_bytes(bytes(data))


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1])


def delete(path):
    path.unlink()


def test_intact_bundle_loads_and_runs(copy):
    b = splitter.load_bundle(copy)
    x = torch.randn(2, 3, 32, 32)
    assert b.server(threads=1).decode(b.device(threads=1).encode(x)).shape == (2, 1000)


@pytest.mark.parametrize("damage", [flip, truncate, delete], ids=["flip", "truncate", "delete"])
@pytest.mark.parametrize("name", FILES)
def test_damaged_file_is_named(copy, name, damage):
    damage(copy / name)
    with pytest.raises(BundleError) as e:
        splitter.load_bundle(copy)
    assert e.value.file == name
    assert name in str(e.value)


def _rewrite_manifest(d, edit, half="server"):
    """Edit a half's manifest and re-seal its own digest, as a careful attacker would."""
    path = d / half / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    cls = DeviceManifest if half == "device" else Manifest
    path.write_bytes(dump(cls.model_validate(data)))


def test_replaced_file_with_resealed_manifest_still_checks_hashes(copy):
    """Swap head.onnx for another model and fix up its size (not its hash) in the manifest."""
    new = (copy / "server" / "tail.onnx").read_bytes()
    (copy / "device" / "head.onnx").write_bytes(new)
    _rewrite_manifest(copy, lambda data: data["files"]["head.onnx"].__setitem__("size", len(new)),
                      "device")
    with pytest.raises(BundleError, match="sha256") as e:
        splitter.load_bundle(copy)
    assert e.value.file == "device/head.onnx"
    with pytest.raises(BundleError, match="sha256") as e:  # the half alone checks it too
        splitter.load_bundle(copy / "device")
    assert e.value.file == "head.onnx"


@pytest.mark.parametrize("half", ["device", "server"])
@pytest.mark.parametrize("key, value, message", [
    ("schema_version", 3, "schema_version 3"),  # a newer schema than this build reads
    ("surprise", 1, "surprise"),  # a field the schema does not have
    ("role", "client", "role 'client'"),
])
def test_manifest_edits_are_rejected(copy, half, key, value, message):
    path = copy / half / "manifest.json"
    data = json.loads(path.read_text())
    data[key] = value
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=message) as e:
        splitter.load_bundle(copy)
    assert e.value.file == f"{half}/manifest.json"


def test_resealed_export_id_no_longer_matches_the_other_half(copy):
    _rewrite_manifest(copy, lambda data: data.__setitem__("export_id", "0" * 32), "device")
    with pytest.raises(BundleError, match="do not belong together") as e:
        splitter.load_bundle(copy)
    assert "export_id" in str(e.value)
    splitter.load_bundle(copy / "device")  # alone, the half is still a valid bundle


def test_manifest_cannot_point_outside_the_bundle(copy):
    def edit(data):
        data["files"]["../escape"] = data["files"]["head.onnx"]

    _rewrite_manifest(copy, edit, "device")
    with pytest.raises(BundleError, match="outside the bundle") as e:
        splitter.load_bundle(copy)
    assert e.value.file == "device/manifest.json"


@pytest.mark.filterwarnings("ignore:Duplicate name")  # the planted entry shadows the real one
def test_a_pickle_planted_in_tail_pt2_never_runs(copy, monkeypatch):
    """tail.pt2 is for trusted torch users; the runtime hashes it but never opens it."""
    import zipfile

    from targets.manifest import sha256_file

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    with zipfile.ZipFile(copy / "server" / "tail.pt2", "a") as z:
        name = next(n for n in z.namelist() if n.endswith("sample_inputs/model.pt"))
        z.writestr(name, pickle.dumps(Boom()))
    entry = sha256_file(copy / "server" / "tail.pt2")
    _rewrite_manifest(copy, lambda data: data["files"].__setitem__("tail.pt2", entry.model_dump()))

    def trap(*a, **k):
        raise AssertionError("the bundle loader unpickled something")

    monkeypatch.setattr(pickle, "loads", trap)
    monkeypatch.setattr(pickle, "load", trap)
    monkeypatch.setattr(torch, "load", trap)
    b = splitter.load_bundle(copy)
    x = torch.randn(1, 3, 32, 32)
    assert b.server(threads=1).decode(b.device(threads=1).encode(x)).shape == (1, 1000)


def test_not_a_directory(tmp_path):
    with pytest.raises(BundleError, match="not a directory"):
        splitter.load_bundle(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="holds no manifest.json"):
        splitter.load_bundle(tmp_path / "empty")
