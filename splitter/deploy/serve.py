"""``splitter serve BUNDLE``: the server half behind HTTP (FastAPI + uvicorn), Open Inference Protocol v2.

::

    GET  /v2/health/live · /v2/health/ready          200 / 400 (not ready)
    GET  /v2                                         server metadata
    GET  /v2/models/{name}[/versions/1]              model metadata (+ provider, batching)
    GET  /v2/models/{name}[/versions/1]/ready        200 / 400
    POST /v2/models/{name}[/versions/1]/infer        input "payload" (BYTES, one payload an element,
                                                     base64 in JSON or binary with
                                                     Inference-Header-Content-Length) -> outputs:
                                                     logits, topk_indices, topk_scores (classifiers;
                                                     parameters.top_k) or every tail output by name
    GET  /metrics                                    Prometheus text format
    POST /v1/infer?k=5 · GET /v1/health · /v1/manifest   the earlier protocol, same pipeline

    body ─► size checks (411/413) ─► Budget.admit(bytes) ─► parse (400) ─► add_samples (503)
         ─► decode symbols (thread pool) ─► Batcher (up to max_batch samples, max_delay_ms)
         ─► tail.onnx ─► outputs ─► reply

Errors on ``/v2`` are the protocol's ``{"error": "..."}``; on ``/v1`` ``{"detail": "..."}``.
Over budget (requests queued, samples or bytes in flight) the reply is 503 with
``Retry-After``, at once. The body is bounded twice: by its ``Content-Length`` before
anything is read, and while streaming (a client may lie or send chunked data). A bad payload
costs one 400; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

# At module level: FastAPI resolves the endpoints' (postponed) annotations in this namespace.
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from splitter.deploy import oip, payload
from splitter.deploy.batching import Batcher, Budget, Overloaded, Ticket
from splitter.deploy.runtime import Bundle, load_bundle
from splitter.errors import ConfigError, PayloadError, SplitterError

__all__ = ["ServeOptions", "create_app", "serve", "DEFAULT_MAX_BYTES"]

log = logging.getLogger("splitter.serve")
DEFAULT_MAX_BYTES = 8 << 20
MAX_K = 100
VERSION = "1"
INPUT = "payload"


class ServeOptions(BaseModel):
    """How a bundle is served: limits, budgets, batching, provider. One schema for the CLI,
    the Python API and the Ray Serve deployment."""

    model_config = ConfigDict(extra="forbid")

    model_name: str | None = Field(None, description="name on /v2/models/ (default: the bundle's model)")
    max_bytes: int = Field(DEFAULT_MAX_BYTES, ge=64, description="largest request body, else 413")
    max_payload_samples: int = Field(64, ge=1, description="most samples in one request, else 413")
    max_batch: int = Field(8, ge=1, description="most samples in one tail run (1: one request at a time)")
    max_delay_ms: float = Field(2.0, ge=0, description="longest a request waits for others to batch with")
    max_queue: int = Field(64, ge=1, description="most requests in flight, else 503")
    max_samples_in_flight: int = Field(256, ge=1, description="most samples in flight, else 503")
    max_bytes_in_flight: int = Field(64 << 20, ge=1, description="most payload bytes in flight, else 503")
    retry_after_s: int = Field(1, ge=0, description="Retry-After of a 503")
    threads: int | None = Field(None, ge=1, description="onnxruntime threads (default: all cores)")
    provider: str | None = Field(None, description="onnxruntime execution provider (default: best available)")


class _Fail(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class _Metrics:
    """The app's Prometheus series, in a registry of its own (several apps may share a process)."""

    def __init__(self, engine: _Engine):
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError as e:
            raise ConfigError("splitter serve exports Prometheus metrics: pip install "
                              "'sc2-splitter[serve]' (prometheus-client)") from e

        r = self.registry = CollectorRegistry()
        self.requests = Counter("splitter_requests", "Inference requests by protocol and HTTP status",
                                ["protocol", "status"], registry=r)
        self.latency = Histogram("splitter_request_seconds", "Inference request latency",
                                 ["protocol"], registry=r,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        sizes = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
        self.batch_samples = Histogram("splitter_batch_samples", "Samples in one tail run", registry=r,
                                       buckets=sizes)
        self.batch_requests = Histogram("splitter_batch_requests", "Requests in one tail run",
                                        registry=r, buckets=sizes)
        self.payload_bytes = Histogram("splitter_payload_bytes", "Bytes of each accepted payload",
                                       registry=r, buckets=tuple(256 * 4 ** i for i in range(10)))
        self.rejections = Counter("splitter_rejections", "Requests refused before inference, by reason "
                                  "(queue, samples, bytes: 503; body, samples_per_request: 413)",
                                  ["reason"], registry=r)
        for reason in ("queue", "samples", "bytes", "body", "samples_per_request"):
            self.rejections.labels(reason)  # exported at 0 from the start, for dashboards
        Gauge("splitter_queue_depth", "Requests waiting for the tail", registry=r) \
            .set_function(lambda: engine.batcher.queue_depth)
        inflight = Gauge("splitter_in_flight", "Admitted and unanswered: requests, samples, bytes",
                         ["what"], registry=r)
        for what in ("requests", "samples", "bytes"):
            inflight.labels(what).set_function(lambda w=what: getattr(engine.budget, w))

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _Engine:
    """Budget + batcher + server: one request's payloads in, the tail's outputs out."""

    def __init__(self, server, opts: ServeOptions):
        self.server, self.opts = server, opts
        self.budget = Budget(opts.max_queue, opts.max_samples_in_flight, opts.max_bytes_in_flight,
                             opts.retry_after_s)
        # A tail fixed to one batch size > 1 takes exactly that many samples a run.
        self.max_batch = opts.max_batch if server.batchable else server.manifest.export.tail.batch
        self.metrics = None
        self.decoding = 0  # admitted requests not yet at the batcher (read by its delay rule)
        self.batcher = Batcher(server.run_tail, max_batch=self.max_batch,
                               max_delay_s=opts.max_delay_ms / 1000, on_batch=self._on_batch,
                               incoming=lambda: self.decoding)
        self.metrics = _Metrics(self)

    def _on_batch(self, samples: int, requests: int) -> None:
        if self.metrics is not None:
            self.metrics.batch_samples.observe(samples)
            self.metrics.batch_requests.observe(requests)

    def overloaded(self, e: Overloaded) -> _Fail:
        self.metrics.rejections.labels(e.reason).inc()
        return _Fail(503, str(e), {"retry-after": str(e.retry_after)})

    async def read_body(self, request: Request) -> tuple[bytes, Ticket]:
        """The body, bounded by ``max_bytes``, and a ticket for its bytes in flight."""
        limit = self.opts.max_bytes
        declared = request.headers.get("content-length")
        ticket = None
        if declared is not None:
            if not declared.isdigit():
                raise _Fail(400, "Content-Length is not a number")
            if int(declared) > limit:
                self.metrics.rejections.labels("body").inc()
                raise _Fail(413, f"request body of {declared} bytes exceeds the limit of {limit}")
            try:
                ticket = self.budget.admit(int(declared))
            except Overloaded as e:
                raise self.overloaded(e) from None
        try:
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    self.metrics.rejections.labels("body").inc()
                    raise _Fail(413, f"request body exceeds the limit of {limit} bytes")
            if ticket is None:
                try:
                    ticket = self.budget.admit(len(body))
                except Overloaded as e:
                    raise self.overloaded(e) from None
        except BaseException:
            if ticket is not None:
                ticket.release()
            raise
        return bytes(body), ticket

    async def infer(self, ticket: Ticket, payloads: list[bytes]) -> list[np.ndarray]:
        """Payloads of one request -> the tail's outputs for all their samples, in order."""
        try:
            parsed = [self.server.unpack(p) for p in payloads]
        except PayloadError as e:
            raise _Fail(400, f"bad payload: {e}") from e
        n = sum(p.batch for p in parsed)
        if n > self.opts.max_payload_samples:
            self.metrics.rejections.labels("samples_per_request").inc()
            raise _Fail(413, f"{n} samples in one request exceed the limit of "
                             f"{self.opts.max_payload_samples}; split them over several requests")
        try:
            ticket.add_samples(n)
        except Overloaded as e:
            raise self.overloaded(e) from None
        for p in payloads:
            self.metrics.payload_bytes.observe(len(p))
        self.decoding += 1  # event-loop thread only; the batcher merely reads it
        try:
            symbols = await run_in_threadpool(self._decode, parsed)
            fut = self.batcher.submit(symbols)
        except PayloadError as e:
            raise _Fail(400, f"bad payload: {e}") from e
        finally:
            self.decoding -= 1
            self.batcher.wake()
        return await asyncio.wrap_future(fut)

    def _decode(self, parsed: list[payload.Payload]) -> np.ndarray:
        parts = [self.server.decode_symbols(p).numpy() for p in parsed]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _output_specs(server) -> list[oip.MetadataTensor]:
    m = server.manifest
    if server.classifier:
        return [oip.MetadataTensor(name="logits", datatype=oip.DATATYPES[m.outputs[0].dtype],
                                   shape=[-1, *m.outputs[0].shape]),
                oip.MetadataTensor(name="topk_indices", datatype="INT64", shape=[-1, -1]),
                oip.MetadataTensor(name="topk_scores", datatype="FP32", shape=[-1, -1])]
    return [oip.MetadataTensor(name=o.name, datatype=oip.DATATYPES.get(o.dtype, o.dtype),
                               shape=[-1, *o.shape]) for o in m.outputs]


def _top_k(req: oip.InferenceRequest) -> int:
    k = (req.parameters or {}).get("top_k", 5)
    for o in req.outputs or []:
        if o.name.startswith("topk_") and o.parameters and "top_k" in o.parameters:
            k = o.parameters["top_k"]
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise oip.ProtocolError(f"top_k must be an integer from 1 to {MAX_K}, not {k!r}")
    return k


def _v1_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def _v2_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _Routes:
    """The app's endpoints, as methods over one engine; :func:`create_app` mounts them."""

    def __init__(self, bundle: Bundle, opts: ServeOptions):
        from splitter.deploy.server import Server

        limits = payload.Limits(max_bytes=opts.max_bytes, max_batch=opts.max_payload_samples)
        self.server = Server(bundle, limits=limits, threads=opts.threads, provider=opts.provider)
        self.engine = _Engine(self.server, opts)
        self.metrics, self.opts, self.manifest = self.engine.metrics, opts, bundle.manifest
        self.name = opts.model_name or self.manifest.model
        self.outputs = _output_specs(self.server)

    async def _answered(self, protocol: str, error, work) -> Any:
        """Await ``work``; any failure becomes ``error(status, message, headers)`` in the
        protocol's shape. Every request is counted by status and timed, whatever happens."""
        t0 = time.perf_counter()
        status = 200
        try:
            return await work
        except _Fail as e:
            status = e.status
            return error(e.status, e.message, e.headers)
        except oip.ProtocolError as e:
            status = e.status
            return error(e.status, str(e))
        except SplitterError as e:  # e.g. a sample count a fixed-batch tail cannot take
            status = 400
            return error(400, str(e))
        except Exception as e:  # noqa: BLE001 - still answered in the protocol's shape
            status = 500
            log.exception("inference failed")
            return error(500, f"inference failed: {type(e).__name__}: {e}")
        finally:
            self.metrics.requests.labels(protocol, str(status)).inc()
            self.metrics.latency.labels(protocol).observe(time.perf_counter() - t0)

    def _check_model(self, model: str, version: str | None = None) -> None:
        name = self.name
        if model != name:
            raise _Fail(404, f"unknown model {model!r}; this server serves {name!r} (GET /v2/models/{name})")
        if version is not None and version != VERSION:
            raise _Fail(404, f"model {name!r} has version {VERSION} only, not {version!r}")

    # ---- Open Inference Protocol v2 ----------------------------------------------------
    def live(self) -> dict:
        return {"live": True}

    def _stopped(self) -> JSONResponse | None:
        if not self.engine.batcher.alive:
            return _v2_error(400, "the tail's worker has stopped; restart the server")
        return None

    def ready(self):
        return self._stopped() or {"ready": True}

    def server_metadata(self) -> dict:
        from importlib import metadata

        try:
            version = metadata.version("sc2-splitter")
        except metadata.PackageNotFoundError:
            version = "unknown"
        return oip.ServerMetadata(name="splitter", version=version,
                                  extensions=["binary_tensor_data"]).model_dump()

    def model_metadata(self, model: str, version: str | None = None):
        try:
            self._check_model(model, version)
        except _Fail as e:
            return _v2_error(e.status, e.message)
        m = self.manifest
        return oip.ModelMetadata(
            name=self.name, versions=[VERSION], platform="splitter_onnxruntime",
            inputs=[oip.MetadataTensor(name=INPUT, datatype="BYTES", shape=[-1])],
            outputs=self.outputs,
            parameters={"execution_provider": self.server.provider, "max_batch": self.engine.max_batch,
                        "max_delay_ms": self.opts.max_delay_ms, "model": m.model, "cut": m.cut.name,
                        "bottleneck": m.bottleneck.kind, "symbols": m.symbols.shape,
                        "symbols_dtype": m.symbols.dtype, "pid": os.getpid()},
        ).model_dump()

    def model_ready(self, model: str, version: str | None = None):
        try:
            self._check_model(model, version)
        except _Fail as e:
            return _v2_error(e.status, e.message)
        return self._stopped() or {"name": self.name, "ready": True}

    async def infer_v2(self, request: Request, model: str, version: str | None = None) -> Response:
        return await self._answered("v2", _v2_error, self._infer_v2(request, model, version))

    async def _infer_v2(self, request: Request, model: str, version: str | None) -> Response:
        self._check_model(model, version)
        body, ticket = await self.engine.read_body(request)
        with ticket:
            req, binary = oip.parse_request(body, request.headers.get(oip.HEADER_LENGTH))
            del body
            inp = next((i for i in req.inputs if i.name == INPUT), None)
            if inp is None or len(req.inputs) != 1:
                raise oip.ProtocolError(f"send one input named {INPUT!r} (BYTES), got "
                                        f"{[i.name for i in req.inputs]}")
            payloads = oip.bytes_elements(inp, binary.get(INPUT), max_elements=self.opts.max_payload_samples)
            k = _top_k(req) if self.server.classifier else 0
            known = [o.name for o in self.outputs]
            wanted = [o.name for o in req.outputs] if req.outputs else known
            unknown = [w for w in wanted if w not in known]
            if unknown:
                raise oip.ProtocolError(f"unknown outputs {unknown}; this model has {known}")
            outs = await self.engine.infer(ticket, payloads)
        tensors = _tensors(self.server, outs, wanted, k)
        default_binary = bool((req.parameters or {}).get("binary_data_output", False))
        binary_names = {o.name for o in (req.outputs or [])
                        if (o.binary if o.binary is not None else default_binary)}
        if not req.outputs and default_binary:
            binary_names = set(wanted)
        resp = oip.InferenceResponse(model_name=self.name, model_version=VERSION, id=req.id, outputs=[])
        content, headers = oip.encode_response(resp, tensors, binary_names)
        return Response(content, headers=headers)

    def prometheus(self) -> Response:
        data, ctype = self.metrics.render()
        return Response(data, media_type=ctype)

    # ---- /v1: the earlier protocol, through the same budget and batcher ----------------
    def health(self) -> dict:
        m = self.manifest
        return {"status": "ok", "model": m.model, "cut": m.cut.name, "bottleneck": m.bottleneck.kind}

    def manifest_v1(self) -> Response:
        return Response(self.manifest.model_dump_json(indent=2), media_type="application/json")

    async def infer_v1(self, request: Request, k: int = Query(5, ge=1, le=MAX_K)):
        return await self._answered("v1", _v1_error, self._infer_v1(request, k))

    async def _infer_v1(self, request: Request, k: int) -> dict:
        ctype = request.headers.get("content-type", "application/octet-stream").split(";")[0].strip()
        if ctype != "application/octet-stream":
            raise _Fail(415, f"send the payload as application/octet-stream, not {ctype}")
        if not self.server.classifier:
            raise _Fail(400, "this model has no single (B, classes) output; use POST "
                             f"/v2/models/{self.name}/infer for its outputs")
        body, ticket = await self.engine.read_body(request)
        with ticket:
            if not body:
                raise _Fail(400, "empty body: POST the bytes Device.encode produced")
            outs = await self.engine.infer(ticket, [body])
        preds = self.server.predictions(outs[0], k)
        m = self.manifest
        return {"model": m.model, "cut": m.cut.name,
                "predictions": [[p.model_dump() for p in row] for row in preds]}


def create_app(bundle: Bundle | str | Path, options: ServeOptions | None = None, **overrides: Any):
    """A FastAPI app serving ``bundle`` (a loaded :class:`Bundle` or its directory).

    ``options`` (or keyword ``overrides`` of its fields): see :class:`ServeOptions`.
    """
    opts = (options or ServeOptions()).model_copy(update=overrides)
    opts = ServeOptions.model_validate(opts.model_dump())
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    routes = _Routes(bundle, opts)
    m = bundle.manifest
    app = FastAPI(title=f"splitter: {m.model} tail after {m.cut.name}", version=VERSION)
    app.state.engine = routes.engine
    app.router.on_shutdown.append(routes.engine.batcher.close)
    get = [("/v2/health/live", routes.live), ("/v2/health/ready", routes.ready),
           ("/v2", routes.server_metadata), ("/metrics", routes.prometheus),
           ("/v1/health", routes.health), ("/v1/manifest", routes.manifest_v1)]
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        get += [(prefix, routes.model_metadata), (f"{prefix}/ready", routes.model_ready)]
        app.add_api_route(f"{prefix}/infer", routes.infer_v2, methods=["POST"])
    for path, endpoint in get:
        app.add_api_route(path, endpoint, methods=["GET"])
    app.add_api_route("/v1/infer", routes.infer_v1, methods=["POST"])
    return app


def _tensors(server, outs: list[np.ndarray], wanted: list[str], k: int) -> dict[str, np.ndarray]:
    """The outputs a client asked for, in its order, from the tail's outputs."""
    if server.classifier:
        have: dict[str, Any] = {"logits": outs[0]}
        if any(w.startswith("topk_") for w in wanted):
            have["topk_scores"], have["topk_indices"] = server.topk(outs[0], k)
    else:
        have = dict(zip(server.output_names, outs))
    return {w: have[w] for w in wanted}


def serve(bundle_dir: str | Path, options: ServeOptions | None = None, *, host: str = "127.0.0.1",
          port: int = 8000, log_level: str = "info", **overrides: Any) -> None:
    """Load and verify the bundle, then serve it until interrupted."""
    import uvicorn

    opts = (options or ServeOptions()).model_copy(update=overrides)
    app = create_app(bundle_dir, opts)
    # uvicorn's own connection cap sits above the budget, so the budget answers first (503 +
    # Retry-After) and uvicorn's bare 503 is a last resort.
    uvicorn.run(app, host=host, port=port, log_level=log_level,
                limit_concurrency=max(64, 2 * opts.max_queue + 16), timeout_keep_alive=5)
