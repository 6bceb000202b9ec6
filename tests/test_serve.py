"""``splitter serve`` in a subprocess on a loopback port: real payloads get the right top-k,
garbage gets 400, oversized bodies get 413, and the server keeps answering. Also
``splitter encode`` on real image files, end to end."""

from __future__ import annotations

import subprocess
import sys

import httpx
import numpy as np
import pytest
import torch

import splitter
from tests._server import REPO, start_server
from tests._server import env as _env

MAX_BYTES = 4096


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    s = splitter.split("test_resnet", at="layer2", bottleneck="crbq", channels=4, input_shape=(3, 64, 64))
    d = tmp_path_factory.mktemp("serve") / "bundle"
    b = splitter.export(s, d, exporter="torchscript", threads=1)
    return s, b


@pytest.fixture(scope="module")
def url(exported):
    with start_server(exported[1].path, "--max-bytes", str(MAX_BYTES), ready="/v1/health") as base:
        yield base


def _post(url, body, **kw):
    headers = {"content-type": "application/octet-stream"}
    return httpx.post(f"{url}/v1/infer", content=body, headers=headers, timeout=30, **kw)


def test_real_payloads_get_the_split_s_predictions(exported, url):
    s, b = exported
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    r = _post(url, b.device(threads=1).encode(x), params={"k": 3})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    with torch.no_grad():
        ref = s(x).softmax(1).topk(3, dim=1)
    assert [[p["index"] for p in row] for row in preds] == ref.indices.tolist()
    assert np.allclose([[p["score"] for p in row] for row in preds], ref.values.numpy(), rtol=1e-4)


def test_split_encode_payload_is_accepted_too(exported, url):
    s, _ = exported
    x = torch.randn(1, 3, 64, 64)
    r = _post(url, s.encode(x), params={"k": 1})
    assert r.status_code == 200
    with torch.no_grad():
        assert r.json()["predictions"][0][0]["index"] == int(s(x).argmax())


@pytest.mark.parametrize("body", [b"garbage", b"SP\x01\x02\x01\x03\x08\x08\x08\x05abc",
                                  b"SP\x01\x03\x01\x00\x00"], ids=["not-payload", "truncated", "wrong-kind"])
def test_bad_payloads_get_400_and_the_server_keeps_serving(exported, url, body):
    r = _post(url, body)
    assert r.status_code == 400 and r.json()["detail"].startswith("bad payload")
    x = torch.randn(1, 3, 64, 64)
    assert _post(url, exported[1].device(threads=1).encode(x)).status_code == 200


def test_truncated_real_payload_gets_400(exported, url):
    data = exported[1].device(threads=1).encode(torch.randn(1, 3, 64, 64))
    r = _post(url, data[:-1])  # one sample: the short form, whose string runs to the end
    n = len(data) - 4
    assert r.status_code == 400 and f"has {n - 1} bytes, expected {n}" in r.json()["detail"]


def test_oversized_bodies_get_413(url):
    r = _post(url, b"x" * (MAX_BYTES + 1))  # announced by Content-Length
    assert r.status_code == 413

    def chunks():  # no Content-Length: caught while reading
        for _ in range(8):
            yield b"y" * 1024

    r = httpx.post(f"{url}/v1/infer", content=chunks(), timeout=30,
                   headers={"content-type": "application/octet-stream"})
    assert r.status_code == 413
    assert httpx.get(f"{url}/v1/health", timeout=5).json()["status"] == "ok"


def test_wrong_content_type_and_empty_body(url):
    assert httpx.post(f"{url}/v1/infer", json={"a": 1}, timeout=10).status_code == 415
    assert _post(url, b"").status_code == 400


def test_manifest_endpoint_is_the_bundle_s(exported, url):
    from targets.manifest import Manifest

    m = Manifest.model_validate(httpx.get(f"{url}/v1/manifest", timeout=10).json())
    assert m == exported[1].manifest


def test_encode_cli_on_image_files_then_serve(exported, url, tmp_path):
    from PIL import Image

    s, b = exported
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(300, 400), (120, 90)]):  # landscape JPEG, portrait PNG
        p = tmp_path / f"img{i}.{'jpg' if i == 0 else 'png'}"
        Image.fromarray((rng.random((*size, 3)) * 255).astype("uint8")).save(p)
        paths.append(p)
    out = tmp_path / "payload.bin"
    proc = subprocess.run([sys.executable, "-m", "splitter.cli", "encode", str(b.path), *map(str, paths),
                           "-o", str(out), "--threads", "1"], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{out.stat().st_size:,} bytes for 2 images" in proc.stdout
    r = _post(url, out.read_bytes(), params={"k": 1})
    assert r.status_code == 200
    device = b.device(threads=1)
    x = torch.from_numpy(np.stack([device.preprocess(p) for p in paths]))
    assert x.shape == (2, 3, 64, 64)
    with torch.no_grad():
        assert [row[0]["index"] for row in r.json()["predictions"]] == s(x).argmax(1).tolist()
