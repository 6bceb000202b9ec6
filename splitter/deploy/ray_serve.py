"""The same app as a Ray Serve deployment: ``splitter serve BUNDLE --replicas N [--ray-address ADDR]``.

::

    client ─► Ray Serve HTTP proxy (host:port) ─► replica 1: create_app(bundle) ─► budget ─► batcher ─► tail
                                              └─► replica N: the same app, its own budget and batcher

Each replica builds the FastAPI app of :mod:`splitter.deploy.serve` from the bundle
directory (``serve.ingress`` with a builder, so nothing but the path and the options is
shipped), so every endpoint, error and metric is the single-process server's. Ray is an
optional extra (``pip install 'sc2-splitter[ray]'``); it is imported only here.

On a Ray cluster the bundle directory must be readable at the same path on every node
that may host a replica (a shared filesystem, or the same copy on each).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from splitter.deploy.serve import ServeOptions
from splitter.errors import ConfigError

__all__ = ["application", "run_ray"]

APP_NAME = "splitter"


def _ray():
    try:
        import ray
        from ray import serve
    except ImportError as e:
        raise ConfigError("Ray Serve is not installed; pip install 'sc2-splitter[ray]' "
                          "(or serve without --replicas)") from e
    return ray, serve


def application(bundle_dir: str | Path, options: ServeOptions | None = None, *, replicas: int = 1,
                autoscaling: dict[str, Any] | None = None, replica_cpus: float = 1.0):
    """A bound Ray Serve application serving ``bundle_dir`` with ``replicas`` replicas.

    ``autoscaling``: Ray Serve's ``autoscaling_config`` (``min_replicas``, ``max_replicas``,
    ``target_ongoing_requests``, ...), passed through; it replaces ``replicas``. Each
    replica's onnxruntime uses ``replica_cpus`` threads unless ``options.threads`` says.
    """
    _, serve = _ray()
    path = Path(bundle_dir).resolve()
    if (path / "server" / "manifest.json").is_file():
        path = path / "server"  # replicas load the server half only
    elif not (path / "manifest.json").is_file():
        raise ConfigError(f"{path} holds no manifest.json or server/manifest.json; pass the folder "
                          f"splitter.export wrote (or its server/ half)")
    opts = (options or ServeOptions()).model_copy()
    if opts.threads is None:
        opts.threads = max(1, int(replica_cpus))
    fields = opts.model_dump()
    where = str(path)

    def build_app():  # runs on each replica
        from splitter.deploy.serve import ServeOptions, create_app

        return create_app(where, ServeOptions(**fields))

    scale: dict[str, Any] = ({"autoscaling_config": autoscaling} if autoscaling
                             else {"num_replicas": int(replicas)})
    deployment = serve.deployment(
        serve.ingress(build_app)(), name="SplitterTail",
        # Let each replica's own budget answer (503 + Retry-After) rather than Ray's queue.
        max_ongoing_requests=opts.max_queue + 1,
        ray_actor_options={"num_cpus": replica_cpus}, **scale)
    return deployment.bind()


def run_ray(bundle_dir: str | Path, options: ServeOptions | None = None, *, replicas: int = 1,
            autoscaling: dict[str, Any] | None = None, address: str | None = None,
            num_cpus: float | None = None, replica_cpus: float = 1.0, host: str = "127.0.0.1",
            port: int = 8000, block: bool = True) -> None:
    """Start (or join, with ``address``) Ray, deploy the app on ``host:port``, serve until interrupted."""
    ray, serve = _ray()
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(application(bundle_dir, options, replicas=replicas, autoscaling=autoscaling,
                          replica_cpus=replica_cpus), name=APP_NAME, route_prefix="/")
    print(f"splitter: serving on http://{host}:{port} through Ray Serve "
          f"({autoscaling or f'{replicas} replicas'})", flush=True)
    if not block:
        return
    import signal

    def _stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
