"""The Open Inference Protocol v2 server: the real ``tritonclient.http`` client against
``splitter serve`` on a loopback port, the JSON (base64) and binary forms, the protocol's
error shape, budgets (503 + Retry-After), dynamic batching bit for bit, execution
providers, tuple outputs and ``/metrics``."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch

import splitter
from splitter.deploy.batching import Batcher, Budget, Overloaded
from splitter.deploy.serve import create_app
from splitter.deploy.server import resolve_provider
from splitter.errors import BundleError
from tests._server import start_server

tritonclient_http = pytest.importorskip("tritonclient.http")
MAX_BYTES = 1 << 16


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    s = splitter.split("test_resnet", at="layer2", bottleneck="crbq", channels=4, input_shape=(3, 64, 64))
    b = splitter.export(s, tmp_path_factory.mktemp("oip") / "bundle", exporter="torchscript", threads=1)
    return s, b


@pytest.fixture(scope="module")
def server(exported):
    """(base url, host:port) of `splitter serve` with dynamic batching on."""
    with start_server(exported[1].path, "--max-bytes", str(MAX_BYTES), "--max-batch", "8",
                      "--max-delay-ms", "5") as base:
        yield base, base.removeprefix("http://")


@pytest.fixture(scope="module")
def local(exported):
    """The bundle's server in this process, one thread: the reference for exact equality."""
    return exported[1].server(threads=1)


def _x(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def _client(server):
    return tritonclient_http.InferenceServerClient(server[1], network_timeout=60.0)


def _infer(client, name: str, payloads: list[bytes], outputs=("logits",), **kw):
    inp = tritonclient_http.InferInput("payload", [len(payloads)], "BYTES")
    inp.set_data_from_numpy(np.array(payloads, dtype=object))
    outs = [tritonclient_http.InferRequestedOutput(o) for o in outputs]
    return client.infer(name, [inp], outputs=outs, **kw)


def test_tritonclient_readiness_and_metadata(exported, server):
    c = _client(server)
    name = exported[1].manifest.model
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(name)
    assert c.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    meta = c.get_model_metadata(name)
    assert meta["name"] == name and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "payload", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "topk_indices", "topk_scores"]
    assert meta["outputs"][0] == {"name": "logits", "datatype": "FP32", "shape": [-1, 1000]}
    assert meta["parameters"]["execution_provider"] == resolve_provider(None) == "CPUExecutionProvider"
    assert meta["parameters"]["max_batch"] == 8
    assert not c.is_model_ready("no_such_model")


def test_tritonclient_infer_matches_the_split(exported, server, local):
    s, b = exported
    device = b.device(threads=1)
    xs = [_x(3, 1), _x(1, 2)]
    payloads = [device.encode(x) for x in xs]  # a 3-sample and a 1-sample (short form) payload
    r = _infer(_client(server), b.manifest.model, payloads,
               outputs=("logits", "topk_indices", "topk_scores"), parameters={"top_k": 3})
    logits = r.as_numpy("logits")
    ref = np.concatenate([local.decode(p).numpy() for p in payloads])
    assert logits.shape == (4, 1000) and np.array_equal(logits, ref)  # bit for bit
    with torch.no_grad():
        split_out = s(torch.cat(xs))
    assert np.allclose(logits, split_out.numpy(), rtol=1e-4, atol=1e-5)
    top = split_out.softmax(1).topk(3, dim=1)
    assert r.as_numpy("topk_indices").tolist() == top.indices.tolist()
    assert np.allclose(r.as_numpy("topk_scores"), top.values.numpy(), rtol=1e-4)


def test_json_base64_form_equals_the_binary_form(exported, server):
    b = exported[1]
    data = b.device(threads=1).encode(_x(2, 5))
    name = b.manifest.model
    body = {"id": "q1", "inputs": [{"name": "payload", "shape": [1], "datatype": "BYTES",
                                    "data": [base64.b64encode(data).decode()]}],
            "outputs": [{"name": "logits"}, {"name": "topk_indices", "parameters": {"top_k": 2}}]}
    r = httpx.post(f"{server[0]}/v2/models/{name}/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert r.json()["id"] == "q1" and r.json()["model_name"] == name
    assert out["topk_indices"]["shape"] == [2, 2] and out["topk_indices"]["datatype"] == "INT64"
    binary = _infer(_client(server), name, [data], outputs=("logits", "topk_indices"),
                    parameters={"top_k": 2})
    # JSON floats round-trip float32 exactly
    assert np.array_equal(np.array(out["logits"]["data"], np.float32).reshape(2, 1000),
                          binary.as_numpy("logits"))
    assert out["topk_indices"]["data"] == binary.as_numpy("topk_indices").reshape(-1).tolist()


def _binary_request(payloads: list[bytes], header_extra: dict | None = None) -> tuple[bytes, dict]:
    raw = b"".join(struct.pack("<I", len(p)) + p for p in payloads)
    head = json.dumps({"inputs": [{"name": "payload", "shape": [len(payloads)], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": len(raw)}}],
                       "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
                       **(header_extra or {})}).encode()
    return head + raw, {"Inference-Header-Content-Length": str(len(head)),
                        "Content-Type": "application/octet-stream"}


def test_binary_extension_by_hand(exported, server, local):
    b = exported[1]
    data = b.device(threads=1).encode(_x(1, 9))
    body, headers = _binary_request([data])
    r = httpx.post(f"{server[0]}/v2/models/{b.manifest.model}/infer", content=body, headers=headers,
                   timeout=30)
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    head = json.loads(r.content[:n])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 4000
    logits = np.frombuffer(r.content[n:], dtype="<f4").reshape(1, 1000)
    assert np.array_equal(logits, local.decode(data).numpy())


@pytest.mark.parametrize("case", ["garbage-payload", "not-json", "bad-base64", "wrong-input",
                                  "sizes-past-body", "unknown-output", "bad-top-k", "wrong-dtype"])
def test_protocol_errors_get_400_with_the_error_shape_and_the_server_keeps_serving(
        exported, server, case):
    b = exported[1]
    url = f"{server[0]}/v2/models/{b.manifest.model}/infer"
    good = b.device(threads=1).encode(_x(1, 3))

    def js(inputs, **extra):
        return {"content": json.dumps({"inputs": inputs, **extra}).encode()}

    b64 = [base64.b64encode(good).decode()]
    inp = {"name": "payload", "shape": [1], "datatype": "BYTES"}
    kw = {
        "garbage-payload": lambda: {"content": _binary_request([b"SP\x02garbage"])[0],
                                    "headers": _binary_request([b"SP\x02garbage"])[1]},
        "not-json": lambda: {"content": b"{not json"},
        "bad-base64": lambda: js([{**inp, "data": ["***"]}]),
        "wrong-input": lambda: js([{**inp, "name": "image", "data": b64}]),
        "sizes-past-body": lambda: {"content": json.dumps({"inputs": [{**inp, "parameters": {
            "binary_data_size": 999}}]}).encode() + b"\x01\x00",
            "headers": {"Inference-Header-Content-Length": str(len(json.dumps({"inputs": [{**inp, "parameters": {
                "binary_data_size": 999}}]})))}},
        "unknown-output": lambda: js([{**inp, "data": b64}], outputs=[{"name": "features"}]),
        "bad-top-k": lambda: js([{**inp, "data": b64}], parameters={"top_k": 0}),
        "wrong-dtype": lambda: js([{**inp, "datatype": "FP32", "data": [1.0]}]),
    }[case]()
    r = httpx.post(url, timeout=30, **kw)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"} and r.json()["error"]
    if case == "garbage-payload":
        assert r.json()["error"].startswith("bad payload")
    ok = _infer(_client(server), b.manifest.model, [good])
    assert ok.as_numpy("logits").shape == (1, 1000)


def test_unknown_model_is_404_and_oversized_bodies_413(exported, server):
    b = exported[1]
    r = httpx.post(f"{server[0]}/v2/models/nope/infer", json={"inputs": []}, timeout=10)
    assert r.status_code == 404 and "test_resnet" in r.json()["error"]
    assert httpx.get(f"{server[0]}/v2/models/nope", timeout=10).status_code == 404
    url = f"{server[0]}/v2/models/{b.manifest.model}/infer"
    r = httpx.post(url, content=b"x" * (MAX_BYTES + 1), timeout=30)
    assert r.status_code == 413 and set(r.json()) == {"error"}

    def chunks():  # no Content-Length: caught while reading
        for _ in range(MAX_BYTES // 1024 + 2):
            yield b"y" * 1024

    assert httpx.post(url, content=chunks(), timeout=30).status_code == 413
    assert _client(server).is_server_ready()


def test_concurrent_batched_replies_equal_one_at_a_time(exported, server, local):
    b = exported[1]
    device = b.device(threads=1)
    payloads = [device.encode(_x(1 + i % 3, 100 + i)) for i in range(16)]
    client_args = (b.manifest.model,)

    def one(p):
        c = _client(server)
        return _infer(c, *client_args, [p]).as_numpy("logits")

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(one, payloads))
    for p, g in zip(payloads, got):
        assert np.array_equal(g, local.decode(p).numpy())


def test_batcher_stacks_requests_and_each_reply_is_bit_identical(exported, local):
    """8 requests of 1-3 samples run as one tail batch; each reply equals that request alone."""
    device = exported[1].device(threads=1)
    symbols = [local.decode_symbols(device.encode(_x(1 + i % 3, 200 + i))).numpy() for i in range(8)]
    total = sum(len(s) for s in symbols)
    runs = []
    batcher = Batcher(local.run_tail, max_batch=total, max_delay_s=60,
                      on_batch=lambda n, r: runs.append((n, r)))
    try:
        futures = [batcher.submit(s) for s in symbols]
        replies = [f.result(timeout=60) for f in futures]
    finally:
        batcher.close()
    assert runs == [(total, 8)]  # one tail run, all eight requests stacked
    for s, reply in zip(symbols, replies):
        alone = local.run_tail(s)
        assert len(reply) == len(alone) == 1
        assert reply[0].shape == alone[0].shape and np.array_equal(reply[0], alone[0])


def test_batcher_slices_big_requests_to_max_batch_bit_for_bit(exported, local):
    device = exported[1].device(threads=1)
    sizes = (1, 6, 2, 2, 1)
    symbols = [local.decode_symbols(device.encode(_x(k, 300 + k))).numpy() for k in sizes]
    runs = []
    batcher = Batcher(local.run_tail, max_batch=4, max_delay_s=0.5, on_batch=lambda n, r: runs.append(n))
    try:
        futs = [batcher.submit(s) for s in symbols]
        outs = [f.result(timeout=60) for f in futs]
    finally:
        batcher.close()
    assert all(n <= 4 for n in runs) and sum(runs) == sum(sizes)
    for s, out in zip(symbols, outs):
        assert np.array_equal(out[0], local.run_tail(s)[0])


def test_budget_refuses_at_once_and_releases():
    budget = Budget(max_requests=2, max_samples=4, max_bytes=100)
    a = budget.admit(60)
    with pytest.raises(Overloaded) as e:
        budget.admit(50)
    assert e.value.reason == "bytes"
    a.add_samples(3)
    b = budget.admit(10)
    with pytest.raises(Overloaded) as e:
        b.add_samples(2)
    assert e.value.reason == "samples"
    with pytest.raises(Overloaded) as e:
        budget.admit(1)
    assert e.value.reason == "queue"
    a.release()
    b.release()
    a.release()  # twice is harmless
    assert (budget.requests, budget.samples, budget.bytes) == (0, 0, 0)
    big = budget.admit(1000)  # an idle server takes any one request the body limit allows
    big.add_samples(50)
    big.release()


async def _asgi_over_budget(app, name: str, body: bytes, gate: threading.Event):
    """Request 1 is admitted and held at the tail; request 2 arrives meanwhile."""
    transport = httpx.ASGITransport(app=app)
    url = f"/v2/models/{name}/infer"
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        first = asyncio.create_task(c.post(url, content=body, timeout=60))
        engine = app.state.engine
        for _ in range(3000):  # until request 1 holds its samples and waits on the tail
            if engine.budget.samples == 2:
                break
            await asyncio.sleep(0.01)
        r2 = await c.post(url, content=body, timeout=60)
        gate.set()
        r1 = await first
        metrics = (await c.get("/metrics")).text
    return r1, r2, metrics


@pytest.mark.parametrize("reason", ["queue", "samples", "bytes"])
def test_over_budget_gets_503_with_retry_after_then_serves(exported, reason):
    b = exported[1]
    payload = b.device(threads=1).encode(_x(2, 7))
    body = json.dumps({"inputs": [{"name": "payload", "shape": [1], "datatype": "BYTES",
                                   "data": [base64.b64encode(payload).decode()]}]}).encode()
    limit = {"queue": {"max_queue": 1}, "samples": {"max_samples_in_flight": 3},
             "bytes": {"max_bytes_in_flight": 2 * len(body) - 1}}[reason]
    app = create_app(b, threads=1, retry_after_s=2, **limit)
    gate = threading.Event()
    engine = app.state.engine
    real = engine.server.run_tail
    engine.batcher._run = lambda x: (gate.wait(30), real(x))[1]
    try:
        r1, r2, metrics = asyncio.run(_asgi_over_budget(app, b.manifest.model, body, gate))
    finally:
        gate.set()
        engine.batcher.close()
    assert r1.status_code == 200, r1.text
    assert r2.status_code == 503 and r2.headers["retry-after"] == "2"
    assert set(r2.json()) == {"error"} and "retry" in r2.json()["error"]
    assert f'splitter_rejections_total{{reason="{reason}"}} 1.0' in metrics
    assert (engine.budget.requests, engine.budget.samples, engine.budget.bytes) == (0, 0, 0)


def test_providers():
    assert resolve_provider("cpu") == "CPUExecutionProvider"
    assert resolve_provider("CPUExecutionProvider") == "CPUExecutionProvider"
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(BundleError, match="--provider cpu"):
            resolve_provider("cuda")
    with pytest.raises(BundleError, match="not in this onnxruntime"):
        resolve_provider("warp-drive")


def test_metrics_expose_requests_latency_batches_bytes_queue_and_rejections(exported, server):
    from prometheus_client.parser import text_string_to_metric_families

    b = exported[1]
    _infer(_client(server), b.manifest.model, [b.device(threads=1).encode(_x(1, 4))])
    httpx.post(f"{server[0]}/v2/models/{b.manifest.model}/infer", content=b"{bad", timeout=10)
    httpx.post(f"{server[0]}/v2/models/{b.manifest.model}/infer", content=b"z" * (MAX_BYTES + 1),
               timeout=10)
    r = httpx.get(f"{server[0]}/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert samples[("splitter_requests_total", (("protocol", "v2"), ("status", "200")))] >= 1
    assert samples[("splitter_requests_total", (("protocol", "v2"), ("status", "400")))] >= 1
    assert samples[("splitter_requests_total", (("protocol", "v2"), ("status", "413")))] >= 1
    assert samples[("splitter_request_seconds_count", (("protocol", "v2"),))] >= 3
    assert samples[("splitter_batch_samples_count", ())] >= 1
    assert samples[("splitter_batch_samples_bucket", (("le", "+Inf"),))] >= 1
    assert samples[("splitter_batch_requests_count", ())] >= 1
    assert samples[("splitter_payload_bytes_count", ())] >= 1
    assert samples[("splitter_payload_bytes_sum", ())] > 0
    assert samples[("splitter_queue_depth", ())] == 0
    assert samples[("splitter_in_flight", (("what", "requests"),))] == 0
    assert samples[("splitter_rejections_total", (("reason", "body"),))] >= 1


class _TwoHeads(torch.nn.Module):
    """A classifier head and a dense map: a tail with a tuple of outputs."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.body = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 5)
        self.seg = torch.nn.Conv2d(8, 3, 1)

    def forward(self, x):
        y = torch.relu(self.body(torch.relu(self.stem(x))))
        return self.fc(y.mean((2, 3))), self.seg(y)


def test_tuple_model_serves_every_output(tmp_path):
    torch.manual_seed(0)
    s = splitter.split(_TwoHeads().eval(), at="stem", bottleneck="crbq", channels=4,
                       input_shape=(3, 32, 32))
    b = splitter.export(s, tmp_path / "bundle", exporter="torchscript", threads=1)
    app = create_app(b, threads=1)
    x = _x(2, 11)[:, :, :32, :32].contiguous()
    data = b.device(threads=1).encode(x)
    body = {"inputs": [{"name": "payload", "shape": [1], "datatype": "BYTES",
                        "data": [base64.b64encode(data).decode()]}]}
    name = b.manifest.model

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            meta = (await c.get(f"/v2/models/{name}")).json()
            r = await c.post(f"/v2/models/{name}/infer", json=body, timeout=60)
            v1 = await c.post("/v1/infer", content=data, headers={"content-type": "application/octet-stream"})
            return meta, r, v1

    try:
        meta, r, v1 = asyncio.run(go())
    finally:
        app.state.engine.batcher.close()
    assert [o["name"] for o in meta["outputs"]] == ["output_0", "output_1"]
    assert r.status_code == 200, r.text
    outs = {o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in r.json()["outputs"]}
    with torch.no_grad():
        ref = s(x)
    local = b.server(threads=1).decode(data)
    for i, name_i in enumerate(["output_0", "output_1"]):
        assert outs[name_i].shape == tuple(ref[i].shape)
        assert np.array_equal(outs[name_i], local[i].numpy())
        assert np.allclose(outs[name_i], ref[i].numpy(), rtol=1e-4, atol=1e-5)
    assert v1.status_code == 400 and "/v2/models/" in v1.json()["detail"]


def test_a_failing_tail_answers_500_in_the_protocol_shape_and_keeps_serving(exported):
    b = exported[1]
    app = create_app(b, threads=1)
    engine = app.state.engine
    real, calls = engine.server.run_tail, []

    def flaky(x):
        calls.append(len(x))
        if len(calls) == 1:
            raise RuntimeError("device lost")
        return real(x)

    engine.batcher._run = flaky
    data = b.device(threads=1).encode(_x(1, 12))
    body = {"inputs": [{"name": "payload", "shape": [1], "datatype": "BYTES",
                        "data": [base64.b64encode(data).decode()]}], "outputs": [{"name": "logits"}]}

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            url = f"/v2/models/{b.manifest.model}/infer"
            return await c.post(url, json=body, timeout=60), await c.post(url, json=body, timeout=60)

    try:
        r1, r2 = asyncio.run(go())
    finally:
        engine.batcher.close()
    assert r1.status_code == 500 and r1.json() == {"error": "inference failed: RuntimeError: device lost"}
    assert r2.status_code == 200
    assert (engine.budget.requests, engine.budget.samples, engine.budget.bytes) == (0, 0, 0)
