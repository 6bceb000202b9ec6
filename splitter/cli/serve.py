"""``splitter serve BUNDLE``: serve a bundle's tail over HTTP (Open Inference Protocol v2).

One process with uvicorn by default; ``--replicas N`` runs it as a Ray Serve deployment
(a local Ray when ``--ray-address`` is not given)."""

from __future__ import annotations

import argparse
import json

HELP = ("serve a bundle over the Open Inference Protocol (POST /v2/models/NAME/infer), "
        "with dynamic batching, budgets and /metrics; --replicas N for Ray Serve")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from splitter.deploy.serve import ServeOptions

    d = ServeOptions()
    p.add_argument("bundle", help="directory written by `splitter split ... --out DIR`")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name", default=None, help="name under /v2/models/ (default: the bundle's model)")
    p.add_argument("--max-bytes", type=int, default=d.max_bytes,
                   help=f"largest request body accepted, else 413 (default {d.max_bytes})")
    p.add_argument("--max-payload-samples", type=int, default=d.max_payload_samples,
                   help=f"most samples in one request, else 413 (default {d.max_payload_samples})")
    p.add_argument("--max-batch", type=int, default=d.max_batch,
                   help=f"dynamic batching: most samples in one tail run; 1 runs each request alone "
                        f"(default {d.max_batch})")
    p.add_argument("--max-delay-ms", type=float, default=d.max_delay_ms,
                   help=f"dynamic batching: longest a request waits for company (default {d.max_delay_ms})")
    p.add_argument("--max-queue", type=int, default=d.max_queue,
                   help=f"most requests in flight, else 503 + Retry-After (default {d.max_queue})")
    p.add_argument("--max-samples-in-flight", type=int, default=d.max_samples_in_flight,
                   help=f"most samples in flight, else 503 (default {d.max_samples_in_flight})")
    p.add_argument("--max-bytes-in-flight", type=int, default=d.max_bytes_in_flight,
                   help=f"most payload bytes in flight, else 503 (default {d.max_bytes_in_flight})")
    p.add_argument("--provider", default=None,
                   help="onnxruntime execution provider: cpu, cuda, tensorrt, rocm, ... or a full "
                        "onnxruntime name (default: the best this onnxruntime has)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all cores)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    ray = p.add_argument_group("Ray Serve (pip install 'sc2-splitter[ray]')")
    ray.add_argument("--replicas", type=int, default=None,
                     help="serve through Ray Serve with N replicas, each its own batcher and budget")
    ray.add_argument("--ray-address", default=None,
                     help="join this Ray cluster (e.g. ray://head:10001 or auto); default: start Ray here")
    ray.add_argument("--ray-num-cpus", type=float, default=None,
                     help="CPUs of a locally started Ray (default: all)")
    ray.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs Ray reserves per replica")
    ray.add_argument("--autoscaling", default=None, metavar="JSON",
                     help='Ray Serve autoscaling_config, e.g. \'{"min_replicas": 1, "max_replicas": 4, '
                          '"target_ongoing_requests": 8}\' (replaces --replicas)')


def _options(args: argparse.Namespace):
    from splitter.deploy.serve import ServeOptions

    return ServeOptions(model_name=args.model_name, max_bytes=args.max_bytes,
                        max_payload_samples=args.max_payload_samples, max_batch=args.max_batch,
                        max_delay_ms=args.max_delay_ms, max_queue=args.max_queue,
                        max_samples_in_flight=args.max_samples_in_flight,
                        max_bytes_in_flight=args.max_bytes_in_flight, threads=args.threads,
                        provider=args.provider)


def run(args: argparse.Namespace) -> int:
    from splitter.errors import ConfigError

    opts = _options(args)
    if args.replicas is None and args.autoscaling is None:
        from splitter.deploy.serve import serve

        serve(args.bundle, opts, host=args.host, port=args.port, log_level=args.log_level)
        return 0
    try:
        autoscaling = json.loads(args.autoscaling) if args.autoscaling else None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--autoscaling is not JSON ({e}); pass e.g. "
                          f'\'{{"min_replicas": 1, "max_replicas": 4}}\'') from e
    from splitter.deploy.ray_serve import run_ray

    run_ray(args.bundle, opts, replicas=args.replicas or 1, autoscaling=autoscaling,
            address=args.ray_address, num_cpus=args.ray_num_cpus, replica_cpus=args.replica_cpus,
            host=args.host, port=args.port)
    return 0
