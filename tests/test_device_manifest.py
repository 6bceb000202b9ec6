"""targets.device_manifest: the device reads its manifest without pydantic, against the schema
pydantic itself writes, and accepts exactly what the pydantic model accepts (but for the
per-kind bottleneck options, which nothing on the device reads)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from pydantic import ValidationError

import splitter
from splitter.errors import BundleError
from targets import device_manifest
from targets.manifest import DeviceManifest, device_schema


def test_the_shipped_schema_is_the_pydantic_models():
    assert device_manifest.SCHEMA == device_schema(), (
        "targets/_device_schema.py is stale: regenerate it with `python -m targets.manifest`")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """A real device manifest (an int8 head, so the optional Int8Report is filled too)."""
    torch.manual_seed(0)
    s = splitter.split("test_resnet", at="layer2", bottleneck="entropy", channels=4,
                       input_shape=(3, 32, 32)).eval()
    d = tmp_path_factory.mktemp("dm") / "b"
    cal = torch.randn(8, 3, 32, 32).clamp(-2, 2).numpy()
    splitter.export(s, d, exporter="torchscript", threads=1, int8=True, calibration=cal,
                    int8_min_top1=0.0)
    return json.loads((d / "device" / "manifest.json").read_text())


def _paths(x, path=()):
    """Every (path, value) in the JSON tree, objects and lists included."""
    yield path, x
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _paths(v, (*path, k))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _paths(v, (*path, i))


def _mutants(data):
    """The manifest with one thing broken (or not) at every place: a field dropped, a value of
    another type, null, an unknown field, a string that breaks a pattern."""
    for path, value in list(_paths(data)):
        if not path:
            continue
        *head, last = path
        for how, new in [("drop", None), ("list", [[]]), ("null", None), ("dict", {"x": []}),
                         ("str", "zz")]:
            m = copy.deepcopy(data)
            parent = m
            for k in head:
                parent = parent[k]
            if how == "drop":
                if isinstance(parent, list):
                    continue
                del parent[last]
            elif how == "str" and not isinstance(value, str):
                continue
            else:
                parent[last] = new
            yield f"{how} {'.'.join(map(str, path))}", m
        if isinstance(value, dict):
            m = copy.deepcopy(data)
            target = m
            for k in path:
                target = target[k]
            target["zz_extra"] = 1
            yield f"extra in {'.'.join(map(str, path))}", m


def _pydantic_accepts(data) -> bool:
    try:
        DeviceManifest.model_validate(data)
        return True
    except ValidationError:
        return False


def test_check_accepts_exactly_what_pydantic_accepts(manifest):
    assert device_manifest.check(copy.deepcopy(manifest)) == []
    assert manifest["int8"] is not None  # the optional report is in the tree being mutated
    n, disagree = 0, []
    for what, m in _mutants(manifest):
        if "bottleneck.options" in what:  # per-kind rules: bottlenecks.spec's, not the device's
            continue
        ours = not device_manifest.check(copy.deepcopy(m))
        if ours != _pydantic_accepts(m):
            disagree.append(f"{what}: ours {'accepts' if ours else 'rejects'}")
        n += 1
    assert n > 300
    assert not disagree, disagree


def test_check_names_the_field_and_fills_defaults(manifest):
    m = copy.deepcopy(manifest)
    del m["symbols"]["spatial"]
    m["coder"]["payload_version"] = "2"
    errors = sorted(device_manifest.check(m))
    assert errors == ["coder.payload_version: expected integer, got str",
                      "symbols.spatial: field required"]
    m = copy.deepcopy(manifest)
    del m["int8"], m["coder"]["needs_torch"]  # optional: filled as pydantic fills them
    assert device_manifest.check(m) == []
    view = device_manifest.View(m)
    assert view.int8 is None and view.coder.needs_torch is False
    assert view.symbols.spatial == manifest["symbols"]["spatial"]
    assert view.files.get("head.onnx").size == manifest["files"]["head.onnx"]["size"]
    with pytest.raises(AttributeError, match="read-only"):
        view.model = "x"


def test_a_device_half_that_breaks_the_schema_is_refused_by_name(manifest, tmp_path):
    """Digest recomputed (so only the schema can catch it): the device's reader refuses it
    with the field's name, before any file of the half is read."""
    bad = copy.deepcopy(manifest)
    bad["symbols"]["dtype"] = 8
    raw = (json.dumps(bad, indent=2) + "\n").encode()
    claimed = bad["manifest_sha256"]
    fixed = raw.replace(claimed.encode(), device_manifest.digest_of(raw, claimed).encode())
    assert device_manifest.digest_of(fixed, json.loads(fixed)["manifest_sha256"]) == \
        json.loads(fixed)["manifest_sha256"]  # the digest holds: only the schema is broken
    (tmp_path / "manifest.json").write_bytes(fixed)
    with pytest.raises(BundleError, match=r"symbols\.dtype: expected string"):
        splitter.load_bundle(tmp_path)
