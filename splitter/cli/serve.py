"""``splitter serve BUNDLE``: serve a bundle's tail over HTTP."""

from __future__ import annotations

import argparse

HELP = "serve a bundle: POST payload bytes to /v1/infer, get the top-k classes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from splitter.deploy.serve import DEFAULT_MAX_BYTES

    p.add_argument("bundle", help="directory written by `splitter split ... --out DIR`")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                   help=f"largest request body accepted, else 413 (default {DEFAULT_MAX_BYTES})")
    p.add_argument("--max-batch", type=int, default=64, help="most samples in one payload")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all cores)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def run(args: argparse.Namespace) -> int:
    from splitter.deploy.serve import serve

    serve(args.bundle, host=args.host, port=args.port, max_bytes=args.max_bytes,
          max_batch=args.max_batch, threads=args.threads, log_level=args.log_level)
    return 0
