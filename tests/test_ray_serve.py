"""The server as a Ray Serve deployment: 2 replicas on a local Ray (2 CPUs, a small object
store), Open Inference Protocol requests through Ray's HTTP proxy on 127.0.0.1, both replicas
answering, outputs bit for bit the bundle's, errors in the protocol's shape."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
import torch

import splitter
from splitter.deploy.serve import ServeOptions
from tests._server import free_port

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
tritonclient_http = pytest.importorskip("tritonclient.http")

# Starting Ray, its Serve controller, proxy and two replica processes (each importing torch)
# takes about 40 s on 2 cores (90 s on a loaded machine): part of the default suite, because
# CI must show the server running on an existing engine.


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    s = splitter.split("test_resnet", at="layer2", bottleneck="crbq", channels=4, input_shape=(3, 32, 32))
    b = splitter.export(s, tmp_path_factory.mktemp("ray") / "bundle", exporter="torchscript", threads=1)
    return s, b


@pytest.fixture(scope="module")
def ray_url(exported, local_ray):
    from splitter.deploy.ray_serve import APP_NAME, application

    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = application(exported[1].path, ServeOptions(threads=1, max_batch=4), replicas=2,
                          replica_cpus=1)
        serve.run(app, name=APP_NAME, route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        for _ in range(240):  # bounded by polls (about 2 min idle), not by a clock
            if httpx.get(f"{base}/v2/health/ready", timeout=10).status_code == 200:
                break
            time.sleep(0.5)
        else:
            pytest.fail("Ray Serve was not ready after 240 readiness polls")
        yield base
    finally:
        serve.shutdown()  # Ray itself is the session's (conftest.local_ray)


def test_two_replicas_serve_oip_requests(exported, ray_url):
    s, b = exported
    name = b.manifest.model
    pids = {httpx.get(f"{ray_url}/v2/models/{name}", timeout=30).json()["parameters"]["pid"]
            for _ in range(40)}
    assert len(pids) == 2  # two replicas, each its own process

    client = tritonclient_http.InferenceServerClient(ray_url.removeprefix("http://"), network_timeout=60.0)
    assert client.is_server_ready() and client.is_model_ready(name)
    device, local = b.device(threads=1), b.server(threads=1)
    for seed in range(6):
        x = torch.randn(1 + seed % 2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
        data = device.encode(x)
        inp = tritonclient_http.InferInput("payload", [1], "BYTES")
        inp.set_data_from_numpy(np.array([data], dtype=object))
        r = client.infer(name, [inp], outputs=[tritonclient_http.InferRequestedOutput("logits"),
                                                tritonclient_http.InferRequestedOutput("topk_indices")])
        assert np.array_equal(r.as_numpy("logits"), local.decode(data).numpy())
        with torch.no_grad():
            assert r.as_numpy("topk_indices")[:, 0].tolist() == s(x).argmax(1).tolist()

    bad = httpx.post(f"{ray_url}/v2/models/{name}/infer", content=b"{nope", timeout=30)
    assert bad.status_code == 400 and set(bad.json()) == {"error"}
    assert "splitter_requests_total" in httpx.get(f"{ray_url}/metrics", timeout=30).text
