"""``splitter profile BUNDLE``: the device profile's fields are present, positive and round-trip
through JSON (no timing assertions: speed belongs to bench/)."""

from __future__ import annotations

import json

import pytest

import splitter
from splitter.cli import main
from splitter.deploy.profile import DeviceProfile, load_profile, profile
from splitter.errors import BundleError

POSITIVE = ["head_ms_p50", "head_ms_p95", "coder_ms_p50", "coder_ms_p95", "encode_ms_p50",
            "encode_ms_p95", "peak_rss_mb", "payload_bytes", "runs"]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    s = splitter.split("test_resnet", at="layer2", bottleneck="entropy", channels=4,
                       input_shape=(3, 32, 32))
    d = tmp_path_factory.mktemp("profile") / "bundle"
    splitter.export(s, d, threads=1)
    return d


def test_profile_fields(bundle_dir):
    p = profile(bundle_dir, threads=1, runs=5, warmup=1)
    for f in POSITIVE:
        assert getattr(p, f) > 0, f
    assert p.head_ms_p95 >= p.head_ms_p50 and p.encode_ms_p95 >= p.encode_ms_p50
    assert p.input_shape == [3, 32, 32] and p.kind == "entropy" and not p.head_int8
    assert 0 < p.coder_fraction < 1
    assert p.head_macs and p.head_macs > 0 and p.device_gflops > 0
    assert DeviceProfile.model_validate_json(p.model_dump_json()) == p


def test_profile_device_half_alone(bundle_dir):
    p = profile(bundle_dir / "device", threads=1, runs=3, warmup=1)
    assert p.encode_ms_p50 > 0 and p.head_macs is None and p.device_gflops is None


def test_profile_cli_writes_json(bundle_dir, tmp_path, capsys):
    out = tmp_path / "prof.json"
    assert main(["profile", str(bundle_dir), "--threads", "1", "--runs", "3", "-o", str(out)]) == 0
    assert "head" in capsys.readouterr().out
    raw = json.loads(out.read_text())
    for f in POSITIVE:
        assert raw[f] > 0, f
    p = load_profile(out)
    assert p.model_dump(mode="json") == raw


def test_load_profile_errors(tmp_path):
    with pytest.raises(BundleError, match="splitter profile"):
        load_profile(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"model": "x"}')
    with pytest.raises(BundleError, match="not a device profile"):
        load_profile(tmp_path / "bad.json")
