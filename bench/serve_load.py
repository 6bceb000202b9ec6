"""Load on ``splitter serve`` (127.0.0.1 only): throughput and p50/p99 latency at 1, 4 and 16
concurrent clients for one-request-at-a-time, dynamic batching and 2 Ray Serve replicas, the
bare onnxruntime tail's ceiling, and peak RSS under heavy payloads.

::

    resnet50 @224, cut after layer1, crbq (random weights) ─► splitter.export ─► bundle (cached)
    servers:  splitter serve BUNDLE --max-batch 1 | --max-batch B | --replicas 2, all started
    rounds:   bare tail (onnxruntime alone on decoded symbols: all cores / 1 thread, batch 1 / 8)
              then, per client count C in 1, 4, 16 and per server: C client threads (binary
              OIP, one 1-image payload a request, keep-alive) for a short window
              ─► per (server, C): req/s, p50, p99 over all its windows; the best bare-tail
              figure is the ceiling
    heavy:    8 clients × 4 concurrent 64-image payloads, twice each ─► server RSS sampled
              every 20 ms: peak growth, and every reply 200 or 503 (with Retry-After)

Interleaving the windows spreads whatever else loads the machine over every figure alike.
Every figure is measured in this run; nothing is asserted (speed is not a test).

    python bench/serve_load.py                  # about 5 minutes on 2 cores
    python bench/serve_load.py --duration 4 --skip-ray
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _bundle(path: Path, channels: int):
    import torch

    import splitter
    from splitter.deploy.runtime import load_bundle

    if path.exists():
        try:
            return load_bundle(path)
        except Exception as e:  # noqa: BLE001 - stale cache: export again
            print(f"  cached bundle unusable ({e}); exporting again")
            import shutil

            shutil.rmtree(path)
    torch.manual_seed(0)
    t = time.perf_counter()
    s = splitter.split("resnet50", at="layer1", bottleneck="crbq", channels=channels,
                       input_shape=(3, 224, 224))
    b = splitter.export(s, path, inputs=torch.randn(8, 3, 224, 224), exporter="torchscript")
    print(f"  exported {path} in {time.perf_counter() - t:.0f} s")
    return b


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _oip_body(payloads: list[bytes]) -> tuple[bytes, dict[str, str]]:
    raw = b"".join(struct.pack("<I", len(p)) + p for p in payloads)
    head = json.dumps({"inputs": [{"name": "payload", "shape": [len(payloads)], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": len(raw)}}],
                       "outputs": [{"name": "topk_indices", "parameters": {"binary_data": True}}],
                       "parameters": {"top_k": 5}}).encode()
    return head + raw, {"Inference-Header-Content-Length": str(len(head)),
                        "Content-Type": "application/octet-stream"}


class _Server:
    def __init__(self, bundle: Path, args: list[str], log: Path):
        self.port = _free_port()
        self.cmd = cmd = [sys.executable, "-m", "splitter.cli", "serve", str(bundle), "--host",
                          "127.0.0.1", "--port", str(self.port), "--log-level", "warning", *args]
        env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", "/v2/health/ready")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server not ready within {timeout} s; see {self.log.name}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.log.close()


def _client(port: int, path: str, body: bytes, headers: dict, stop_at: float, budget: list,
            lat: list, statuses: list) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    while time.monotonic() < stop_at:
        with _LOCK:
            if budget[0] <= 0:
                return
            budget[0] -= 1
        t = time.perf_counter()
        try:
            conn.request("POST", path, body=body, headers=headers)
            r = conn.getresponse()
            r.read()
            status = r.status
            if status == 503 and not r.getheader("retry-after"):
                status = -503  # a 503 must say when to come back
        except OSError:
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            status = -1
        lat.append(time.perf_counter() - t)
        statuses.append(status)
    conn.close()


_LOCK = threading.Lock()


def _cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) ``pid`` has used so far; 0 for None or a gone process."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load(port: int, path: str, body: bytes, headers: dict, clients: int, duration: float,
          max_requests: int, server_pid: int | None = None) -> tuple:
    """``clients`` threads for ``duration`` s or ``max_requests`` requests: latencies, statuses,
    wall, and the CPU seconds the load generator (this process) and the server used meanwhile."""
    lat: list[float] = []
    statuses: list[int] = []
    budget = [max_requests]
    stop_at = time.monotonic() + duration
    threads = [threading.Thread(target=_client, args=(port, path, body, headers, stop_at, budget, lat, statuses))
               for _ in range(clients)]
    t0, c0, s0 = time.perf_counter(), time.process_time(), _cpu_s(server_pid)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (lat, statuses, time.perf_counter() - t0, time.process_time() - c0,
            _cpu_s(server_pid) - s0 if server_pid else None)


def _summary(windows: list[tuple]) -> dict:
    lat = [x for w in windows for x, s in zip(w[0], w[1]) if s == 200]
    n_all = sum(len(w[1]) for w in windows)
    wall = sum(w[2] for w in windows)
    server_cpu = None if any(w[4] is None for w in windows) else sum(w[4] for w in windows)
    return {"rps": len(lat) / wall, "p50": np.percentile(lat, 50) * 1e3 if lat else float("nan"),
            "p99": np.percentile(lat, 99) * 1e3 if lat else float("nan"), "n": len(lat),
            "errors": n_all - len(lat), "client_cpu": sum(w[3] for w in windows) / wall,
            "per_cpu_s": len(lat) / server_cpu if server_cpu else None}


CEILING_VARIANTS = [(None, 1), (None, 8), (1, 1), (1, 8)]  # (threads: None = all cores, batch)


class _Ceiling:
    """onnxruntime alone on the tail (no spinning, as the server runs it): images/s per
    (threads, batch), measured in short windows between the load windows."""

    def __init__(self, bundle, payload: bytes):
        self.servers = {t: bundle.server(threads=t) for t in {t for t, _ in CEILING_VARIANTS}}
        sym = self.servers[None].decode_symbols(payload).numpy()
        self.inputs = {b: np.repeat(sym, b, axis=0) for b in {b for _, b in CEILING_VARIANTS}}
        self.done = {v: [0, 0.0, 0.0] for v in CEILING_VARIANTS}  # images, wall s, CPU s
        for t, b in CEILING_VARIANTS:
            self.servers[t].run_tail(self.inputs[b])  # warm-up

    def measure(self, seconds: float) -> None:
        for t, b in CEILING_VARIANTS:
            n, t0, c0 = 0, time.perf_counter(), time.process_time()
            while time.perf_counter() - t0 < seconds:
                self.servers[t].run_tail(self.inputs[b])
                n += b
            self.done[(t, b)][0] += n
            self.done[(t, b)][1] += time.perf_counter() - t0
            self.done[(t, b)][2] += time.process_time() - c0

    def rates(self) -> dict[tuple, float]:
        return {v: n / max(s, 1e-9) for v, (n, s, _) in self.done.items()}

    def per_cpu_s(self) -> dict[tuple, float]:
        """Images per CPU second: what the tail costs, whatever share of the CPU it got."""
        return {v: n / max(c, 1e-9) for v, (n, _, c) in self.done.items()}


def _rss_kb(pid: int) -> int:
    """RSS of ``pid`` and its children (a server may fork helpers)."""
    total = 0
    pids = [pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def _heavy(bundle_dir: Path, bundle, log_dir: Path) -> None:
    import torch

    device = bundle.device()
    payload = device.encode(torch.randn(64, 3, 224, 224, generator=torch.Generator().manual_seed(1)))
    print(f"\nheavy payloads: one payload = 64 images, {len(payload) / 1e6:.2f} MB; 8 clients x 4 "
          f"concurrent requests, each sends 2 (64 requests, 4096 images)")
    srv = _Server(bundle_dir, ["--max-bytes", str(16 << 20)], log_dir / "heavy.log")
    try:
        srv.wait_ready()
        body, headers = _oip_body([payload])
        path = f"/v2/models/{bundle.manifest.model}/infer"
        _load(srv.port, path, *_oip_body([device.encode(torch.randn(1, 3, 224, 224))]), 1, 30, 3)
        base = _rss_kb(srv.proc.pid)
        peak = [base]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], _rss_kb(srv.proc.pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        lat: list[float] = []
        statuses: list[int] = []
        threads = [threading.Thread(target=_client, args=(srv.port, path, body, headers,
                                                          time.monotonic() + 300, [2], lat, statuses))
                   for _ in range(32)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
        counts = {s: statuses.count(s) for s in sorted(set(statuses))}
        print(f"  server RSS before {base / 1e6:.2f} GB, peak {peak[0] / 1e6:.2f} GB, growth "
              f"{(peak[0] - base) / 1e6:.2f} GB; replies by status {counts} of {len(statuses)}; "
              f"worst reply {max(lat):.1f} s; wall {wall:.1f} s")
    finally:
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=Path("/tmp/splitter-bench-serve/resnet50-layer1-crbq"))
    ap.add_argument("--channels", type=int, default=24, help="crbq channels")
    ap.add_argument("--duration", type=float, default=9.0, help="seconds per (mode, clients) figure (bound)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved windows the duration is cut into")
    ap.add_argument("--requests", type=int, default=2000, help="requests per measurement (bound)")
    ap.add_argument("--max-batch", type=int, default=16, help="dynamic batching's --max-batch")
    ap.add_argument("--max-delay-ms", type=float, default=5.0)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--skip-heavy", action="store_true")
    ap.add_argument("--only-heavy", action="store_true", help="the heavy-payload scenario alone")
    args = ap.parse_args()
    import onnxruntime
    import torch

    print(f"cpu cores: {os.cpu_count()}, onnxruntime {onnxruntime.__version__} "
          f"{onnxruntime.get_available_providers()}")
    args.bundle.parent.mkdir(parents=True, exist_ok=True)
    bundle = _bundle(args.bundle, args.channels)
    device = bundle.device()
    one = device.encode(torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)))
    print(f"bundle: {bundle}; one-image payload {len(one):,} bytes")

    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"(other work on this machine slows every figure alike)")
    if args.only_heavy:
        _heavy(args.bundle, bundle, args.bundle.parent)
        return
    modes = [("one-at-a-time", ["--max-batch", "1"]),
             (f"dynamic batching (max {args.max_batch}, {args.max_delay_ms:g} ms)",
              ["--max-batch", str(args.max_batch), "--max-delay-ms", str(args.max_delay_ms)])]
    if not args.skip_ray:
        modes.append(("Ray Serve, 2 replicas (1 CPU, 1 thread each)",
                      ["--replicas", "2", "--ray-num-cpus", "2", "--replica-cpus", "1",
                       "--max-batch", str(args.max_batch), "--max-delay-ms", str(args.max_delay_ms)]))
    body, headers = _oip_body([one])
    path = f"/v2/models/{bundle.manifest.model}/infer"
    clients = [int(c) for c in args.clients.split(",")]
    log_dir = args.bundle.parent
    # All servers up at once (idle, they cost no CPU: onnxruntime does not spin); then every
    # figure is gathered in rounds of short windows, mode after mode, so that the load other
    # work puts on this machine drifts over all of them alike.
    servers = [_Server(args.bundle, extra, log_dir / f"{label.split()[0]}.log") for label, extra in modes]
    windows: dict[tuple[str, int], list] = {(label, c): [] for label, _ in modes for c in clients}
    try:
        for srv in servers:
            srv.wait_ready()
            _load(srv.port, path, body, headers, 2, 30, 6)  # warm-up
        ceiling = _Ceiling(bundle, one)
        window = args.duration / args.rounds
        for r in range(args.rounds):
            ceiling.measure(min(window, 2.0))
            for c in clients:
                for (label, _), srv in zip(modes, servers):
                    pid = None if "--replicas" in srv.cmd else srv.proc.pid  # Ray: replicas elsewhere
                    windows[(label, c)].append(_load(srv.port, path, body, headers, c, window,
                                                     args.requests // args.rounds, pid))
            print(f"  round {r + 1}/{args.rounds} done", flush=True)
    finally:
        for srv in servers:
            srv.stop()
    rates = ceiling.rates()
    best_v = max(rates, key=rates.get)
    best = rates[best_v]
    print("\nbare onnxruntime tail (the ceiling): " + ", ".join(
        f"{'all cores' if t is None else f'{t} thread'} batch {b}: {v:.1f}" for (t, b), v in rates.items())
        + f" img/s; best {best:.1f}")
    per_cpu = ceiling.per_cpu_s()
    best_cpu = max(per_cpu.values())
    print("bare tail per CPU second: " + ", ".join(
        f"{'all cores' if t is None else f'{t} thread'} batch {b}: {v:.1f}" for (t, b), v in per_cpu.items())
        + f" img/CPU-s; best {best_cpu:.1f}")
    print("(the load generator shares these cores: 'client CPU' is the share of one core its "
          "threads used; 'per CPU-s' divides replies by the server process's own CPU seconds)")
    print(f"\n{'mode':50s} clients   req/s    p50 ms    p99 ms   ok  errors  of ceiling  "
          f"client CPU  per CPU-s  of bare per CPU-s")
    for label, _ in modes:
        for c in clients:
            r = _summary(windows[(label, c)])
            eff = (f"{r['per_cpu_s']:9.1f} {r['per_cpu_s'] / best_cpu:18.0%}" if r["per_cpu_s"]
                   else f"{'-':>9s} {'-':>18s}")
            print(f"{label:50s} {c:7d} {r['rps']:7.1f} {r['p50']:9.0f} {r['p99']:9.0f} {r['n']:5d} "
                  f"{r['errors']:6d} {r['rps'] / best:9.0%}  {r['client_cpu']:10.0%}  {eff}",
                  flush=True)
    if not args.skip_heavy:
        _heavy(args.bundle, bundle, log_dir)
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
