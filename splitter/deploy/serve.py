"""``splitter serve BUNDLE``: the server half behind HTTP (FastAPI + uvicorn).

::

    POST /v1/infer?k=5   body: payload bytes (application/octet-stream)
                         200 {"model", "cut", "predictions": [[{"index", "score"}, ...] per sample]}
                         400 bad payload · 411/413 missing or too large body · 415 wrong type
    GET  /v1/health      200 {"status": "ok", "model", "cut", "bottleneck"}
    GET  /v1/manifest    200 the bundle's manifest.json

The body is bounded twice: by its ``Content-Length`` before anything is read, and while
streaming (a client may lie or send chunked data), so at most ``max_bytes`` (+ one chunk)
is ever held. A bad payload costs one 400; the server keeps serving.
"""

from __future__ import annotations

from pathlib import Path

# At module level: FastAPI resolves the endpoints' (postponed) annotations in this namespace.
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from splitter.deploy import payload
from splitter.deploy.runtime import Bundle, load_bundle
from splitter.errors import PayloadError

__all__ = ["create_app", "serve", "DEFAULT_MAX_BYTES"]

DEFAULT_MAX_BYTES = 8 << 20
MAX_K = 100


def create_app(bundle: Bundle | str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
               max_batch: int = 64, threads: int | None = None):
    """A FastAPI app serving ``bundle`` (a loaded :class:`Bundle` or its directory)."""
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    limits = payload.Limits(max_bytes=max_bytes, max_batch=max_batch)
    server = bundle.server(limits=limits, threads=threads)
    manifest_json = bundle.manifest.model_dump_json(indent=2)
    m = bundle.manifest
    app = FastAPI(title=f"splitter: {m.model} tail after {m.cut.name}", version="1")

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"detail": message}, status_code=status)

    @app.get("/v1/health")
    def health() -> dict:
        return {"status": "ok", "model": m.model, "cut": m.cut.name, "bottleneck": m.bottleneck.kind}

    @app.get("/v1/manifest")
    def manifest() -> Response:
        return Response(manifest_json, media_type="application/json")

    @app.post("/v1/infer")
    async def infer(request: Request, k: int = Query(5, ge=1, le=MAX_K)):
        ctype = request.headers.get("content-type", "application/octet-stream").split(";")[0].strip()
        if ctype != "application/octet-stream":
            return error(415, f"send the payload as application/octet-stream, not {ctype}")
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                return error(400, "Content-Length is not a number")
            if int(declared) > max_bytes:
                return error(413, f"payload of {declared} bytes exceeds the limit of {max_bytes}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                return error(413, f"payload exceeds the limit of {max_bytes} bytes")
        if not body:
            return error(400, "empty body: POST the bytes Device.encode produced")
        try:
            preds = await run_in_threadpool(server.predict, bytes(body), k)
        except PayloadError as e:
            return error(400, f"bad payload: {e}")
        return {"model": m.model, "cut": m.cut.name,
                "predictions": [[p.model_dump() for p in row] for row in preds]}

    return app


def serve(bundle_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
          max_bytes: int = DEFAULT_MAX_BYTES, max_batch: int = 64, threads: int | None = None,
          log_level: str = "info") -> None:
    """Load and verify the bundle, then serve it until interrupted."""
    import uvicorn

    app = create_app(bundle_dir, max_bytes=max_bytes, max_batch=max_batch, threads=threads)
    uvicorn.run(app, host=host, port=port, log_level=log_level, limit_concurrency=64,
                timeout_keep_alive=5)
