"""sweep: cost every split point of a model (with and without bottlenecks) and pick the best.

::

    model ─► trace + annotate (one run) ─► CostTable (prefix sums, once)
                                              │
       for each point:  plain row  ◄──────────┘  O(1): read the sums, nothing runs
                        bottleneck rows ◄── split(graph, point, bottleneck=kind) per point
       every row: + predicted latency (splitter.explore.latency)  ─►  SweepResult (.rows .to_csv .plot)

    with data=:  every row ─► a trial (splitter.explore.trials: fit, then measure on held-out
                 data) ─► rows with measured accuracy, payload bytes (mean/p50/p95/bpp) and
                 device encode time; + input codecs on the same data; + BD-rates vs an anchor
                 (splitter.explore.measure)

Without data nothing is measured: plain rows carry the raw cut size (exact), bottleneck
rows the raw size of their symbols (``payload_measured`` false: an upper bound, not a
payload), and every latency uses the GFLOP/s estimate of device time (``device_ms_source``
"estimate"). ``accuracy`` stays empty unless a trainer fills it (``set_accuracy``).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pydantic import BaseModel
from torch import nn

from bottlenecks.spec import BottleneckSpec
from passes.cuts import CutPoint
from splitter.compile.costs import CostReport, cost_table, measure_payload, report_at
from splitter.compile.trace import Graph, trace
from splitter.errors import SplitterError
from splitter.explore.bd import BDRow
from splitter.explore.codecs import CodecPoint
from splitter.explore.latency import DEVICE, LTE, SERVER, Link, Machine, latency_ms

__all__ = ["sweep", "SweepResult", "SweepRow", "Skipped", "BottleneckSpec", "select_points", "pareto_mask"]

PLAIN = "plain"


class SweepRow(CostReport):
    """One (point, bottleneck, β) of a sweep: its :class:`CostReport`, latency and accuracy.

    ``measured`` rows come from a trial on held-out data; the rest are analytic.
    ``device_ms_source`` says where the device time in ``latency_ms`` came from
    ("estimate" = encoder FLOPs / the device's GFLOP/s).
    """

    point: str
    config: str = PLAIN  # "plain" or the bottleneck spec's label
    latency_ms: float
    accuracy: float | None = None
    pareto: bool = False  # on the encoder-size / payload (/ accuracy) front
    beta: float | None = None
    measured: bool = False
    fitted: bool = False
    metric: str | None = None  # "accuracy" or "agreement" (with the teacher, unlabelled data)
    accuracy_drop: float | None = None  # teacher minus this row, percentage points
    bytes_p50: float | None = None
    bytes_p95: float | None = None
    bpp: float | None = None
    device_ms: float | None = None
    device_ms_source: str = "estimate"
    bundle: str | None = None
    trial_id: str | None = None

    @property
    def label(self) -> str:
        return self.config + ("" if self.beta is None else f" β={self.beta:g}")


class Skipped(BaseModel):
    """A (point, bottleneck) that could not be built, and why."""

    point: str
    config: str
    reason: str


class SweepResult(BaseModel):
    """Every row of a sweep, the conditions its latencies assume, and the best split."""

    model: str
    input_shape: tuple[int, ...]
    link: Link
    device: Machine
    server: Machine
    rows: list[SweepRow]
    skipped: list[Skipped] = []
    data: str | None = None  # the held-out data the rows were measured on
    fit: str | None = None
    teacher_accuracy: float | None = None
    metric: str | None = None
    codecs: list[CodecPoint] = []  # input codecs on the same held-out samples
    bd: list[BDRow] = []  # every curve against ``anchor``
    anchor: str | None = None

    # -- picking ------------------------------------------------------------------------
    @property
    def best(self) -> SweepRow:
        """The row with the lowest predicted latency (ties: the earlier cut), among rows whose
        payload is known: measured ones, or plain cuts (their raw size is exact). An untrained
        bottleneck's raw symbol size is no payload, so it cannot win."""
        known = [r for r in self.rows if r.payload_measured or r.measured or r.config == PLAIN]
        return min(known or self.rows, key=lambda r: (r.latency_ms, r.cut_index))

    def best_where(self, min_accuracy: float) -> SweepRow | None:
        """Fastest row whose accuracy is known and at least ``min_accuracy``."""
        ok = [r for r in self.rows if r.accuracy is not None and r.accuracy >= min_accuracy]
        return min(ok, key=lambda r: (r.latency_ms, r.cut_index)) if ok else None

    def under(self, link: Link | None = None, device: Machine | None = None,
              server: Machine | None = None) -> SweepResult:
        """The same rows with latencies re-predicted for other conditions (nothing re-runs)."""
        out = self.model_copy(deep=True)
        out.link, out.device, out.server = link or self.link, device or self.device, server or self.server
        for r in out.rows:
            r.latency_ms = _latency(r, out.link, out.device, out.server, r.device_ms)
        return out

    def merged(self, other: SweepResult) -> SweepResult:
        """This sweep's conditions with the rows of both, one per (point, config, β) (this
        sweep's where both have it), in execution order (plain first), Pareto marks redone
        over all; skipped entries and codec points of both."""
        seen: set[tuple] = set()
        rows: list[SweepRow] = []
        for r in sorted(self.rows + other.rows,
                        key=lambda r: (r.cut_index, r.config != PLAIN, r.config, r.beta or 0.0)):
            if (r.point, r.config, r.beta) not in seen:
                seen.add((r.point, r.config, r.beta))
                rows.append(r.model_copy())
        _mark_pareto(rows)
        return self.model_copy(update=dict(rows=rows, skipped=self.skipped + other.skipped,
                                           codecs=self.codecs + other.codecs))

    def set_accuracy(self, point: str, accuracy: float, config: str = PLAIN) -> None:
        """Record a measured accuracy for one row (and refresh the Pareto marks)."""
        for r in self.rows:
            if r.point == point and r.config == config:
                r.accuracy = float(accuracy)
                _mark_pareto(self.rows)
                return
        raise KeyError(f"no row ({point!r}, {config!r}); rows are "
                       f"{sorted({(r.point, r.config) for r in self.rows})[:8]}...")

    # -- output -------------------------------------------------------------------------
    def to_csv(self, path: str | None = None) -> str:
        """Rows as CSV (one line per row, tensors as ``CxHxW dtype`` joined by ``+``)."""
        cols = list(SweepRow.model_fields)
        front = ["point", "config", "beta", "latency_ms", "accuracy", "payload_bytes", "payload_measured",
                 "pareto"]
        cols = front + [c for c in cols if c not in front]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            d = r.model_dump()
            d["tensors"] = " + ".join(f"{'x'.join(map(str, t['shape']))} {t['dtype']}" for t in d["tensors"])
            w.writerow({k: ("" if d[k] is None else d[k]) for k in cols})
        text = buf.getvalue()
        if path:
            with open(path, "w", newline="") as f:
                f.write(text)
        return text

    def to_json(self, path: str | None = None) -> str:
        """Everything (conditions, rows, skipped, best) as JSON."""
        data = self.model_dump(mode="json")
        data["best"] = {"point": self.best.point, "config": self.best.config,
                        "latency_ms": self.best.latency_ms} if self.rows else None
        text = json.dumps(data, indent=1)
        if path:
            with open(path, "w") as f:
                f.write(text)
        return text

    def plot(self, path: str) -> str:
        """Draw the SC2 views (R-D, ExR-D, three-way) and the latencies into ``path`` (PNG);
        with BD figures, also ``<path stem>.bd.csv`` and ``.bd.json`` beside it."""
        from splitter.explore.plot import plot_sweep

        plot_sweep(self, path)
        if self.bd:
            from splitter.explore import bd

            stem = str(path)[:-4] if str(path).lower().endswith(".png") else str(path)
            bd.to_csv(self.bd, stem + ".bd.csv")
            bd.to_json(self.bd, stem + ".bd.json")
        return path

    def bd_table(self) -> str:
        """BD-rate and BD-accuracy of every curve against the anchor, as a terminal table."""
        from splitter._text import table

        rows = [[b.curve, str(b.points), "" if b.bd_rate is None else f"{b.bd_rate:+.1f}",
                 "" if b.bd_accuracy is None else f"{b.bd_accuracy:+.2f}", b.note] for b in self.bd]
        return table(rows, ["curve", "points", f"BD-rate % vs {self.anchor}",
                            "BD-acc points", "note"])

    def table(self) -> str:
        """A terminal table, best row marked ``*`` and Pareto rows ``p``. Without
        measurements, a bottleneck's raw symbol size is shown as ``raw ≤N`` (no payload) and
        latencies as ``~N`` (estimates)."""
        from splitter._text import table

        best = self.best
        if any(r.measured for r in self.rows):
            return self._measured_table(best)
        rows = []
        for r in self.rows:
            if r.payload_measured or r.config == PLAIN:
                pay = f"{r.payload_bytes:,.0f}"
            else:
                pay = f"raw ≤{r.payload_bytes:,.0f}"
            flag = ("*" if r is best else "") + ("p" if r.pareto else "")
            rows.append([r.point, r.config, f"{r.encoder_params / 1e6:.3f}", f"{r.encoder_macs / 1e9:.3f}",
                         f"{r.encoder_bits / 8e6:.2f}", pay,
                         f"{r.tail_macs / 1e9:.3f}", f"~{r.latency_ms:,.1f}",
                         "" if r.accuracy is None else f"{r.accuracy:.3f}", flag])
        return table(rows, ["point", "bottleneck", "enc Mparams", "enc GMACs", "enc MB",
                            "payload B", "tail GMACs", "latency ms", "acc", ""])

    def _measured_table(self, best: SweepRow) -> str:
        from splitter._text import table

        rows = []
        for r in self.rows:
            flag = ("*" if r is best else "") + ("p" if r.pareto else "")
            src = "raw" if r.config == PLAIN else ("pay" if r.payload_measured else "raw≤")
            rows.append([r.point, r.config, "" if r.beta is None else f"{r.beta:g}",
                         "" if r.accuracy is None else f"{100 * r.accuracy:.2f}",
                         "" if r.accuracy_drop is None else f"{r.accuracy_drop:+.2f}",
                         f"{r.payload_bytes:,.1f} {src}", "" if r.bytes_p95 is None else f"{r.bytes_p95:,.0f}",
                         "" if r.bpp is None else f"{r.bpp:.3f}", f"{r.encoder_params / 1e3:,.1f}",
                         f"{r.encoder_macs / 1e6:,.2f}",
                         (f"{r.device_ms:.3f}" if r.device_ms is not None else "~est"),
                         ("" if r.device_ms is not None else "~") + f"{r.latency_ms:,.1f}", flag])
        return table(rows, ["point", "bottleneck", "β", (self.metric or "acc") + " %", "drop",
                            "bytes mean", "p95", "bpp", "enc kparams", "enc MMACs", "device ms",
                            "latency ms", ""])


def pareto_mask(points: Sequence[Sequence[float]]) -> list[bool]:
    """True where no other point is ≤ in every objective and < in one (all minimised)."""
    out = []
    for i, p in enumerate(points):
        dominated = any(
            j != i and all(a <= b for a, b in zip(q, p)) and any(a < b for a, b in zip(q, p))
            for j, q in enumerate(points)
        )
        out.append(not dominated)
    return out


def _objectives(r: SweepRow, with_accuracy: bool) -> tuple[float, ...]:
    base = (float(r.encoder_bits), float(r.payload_bytes))
    return base + ((-(r.accuracy if r.accuracy is not None else float("-inf")),) if with_accuracy else ())


def _mark_pareto(rows: list[SweepRow]) -> None:
    with_acc = any(r.accuracy is not None for r in rows)
    for r, on in zip(rows, pareto_mask([_objectives(r, with_acc) for r in rows])):
        r.pareto = on


def _latency(r: CostReport, link: Link, device: Machine, server: Machine,
             device_ms: float | None = None) -> float:
    """Device (measured ``device_ms``, else FLOPs / GFLOP/s) + link + server (FLOPs / GFLOP/s)."""
    if device_ms is None:
        return latency_ms(r.encoder_flops, r.payload_bytes, r.tail_flops, link=link, device=device,
                          server=server)
    return device_ms + link.transfer_ms(r.payload_bytes) + server.compute_ms(r.tail_flops)


def select_points(graph: Graph, points: str | Iterable[str] = "stages") -> list[CutPoint]:
    """Cut points for a sweep, in execution order, ``input`` and ``output`` always included.

    ``points`` is ``"all"``, ``"stages"`` (timm ``feature_info`` stage outputs; for a model
    without them, the single-tensor cuts named by top-level modules) or a list of names
    (a comma-separated string works too).
    """
    cuts = graph.cut_points()
    if points == "all":
        chosen = cuts
    elif points == "stages":
        names = set(graph.stage_names())
        if not names:
            names = {c.name for c in cuts if c.single and "." not in c.name and c.name == c.module_path}
        chosen = [c for c in cuts if c.name in names]
    else:
        if isinstance(points, str):
            points = [p for p in (s.strip() for s in points.split(",")) if p]
        chosen = [graph.cut(p) for p in points]  # UnknownLayerError lists the closest names
    ends = [cuts[0], cuts[-1]]
    by_index = {c.index: c for c in [*ends, *chosen]}
    return [by_index[i] for i in sorted(by_index)]


def sweep(
    model: nn.Module | str | Graph,
    points: str | Iterable[str] = "stages",
    bottlenecks: Iterable[str | dict | tuple | BottleneckSpec] | None = None,
    *,
    inputs: Any = None,
    input_shape: tuple[int, ...] | None = None,
    link: Link = LTE,
    device: Machine = DEVICE,
    server: Machine = SERVER,
    plain: bool = True,
    progress: bool = False,
    data: Any = None,
    fit: str | None = "quick",
    teacher: nn.Module | None = None,
    betas: Sequence[float] | None = None,
    rate: float | str | None = None,
    store: str | None = None,
    jobs: int = 1,
    ray: str | bool | None = None,
    threads: int = 1,
    codecs: Sequence[str] | None = None,
    qualities: Sequence[int] | None = None,
    anchor: str | None = None,
    eval_limit: int | None = None,
    device_profile: str | dict | None = None,
    schedules: dict[str, list[dict]] | None = None,
    batch_size: int = 16,
    seed: int = 0,
    export: bool = True,
    exporter: str = "auto",
) -> SweepResult:
    """Cost ``model`` split at every point of ``points``, plain and with each bottleneck;
    with ``data``, fit and measure every one of them (see below).

    The model is traced once (or pass a traced :class:`Graph`); plain rows read the graph's
    prefix sums, so sweeping every cut costs about one forward pass. Each bottleneck row
    builds that split (``splitter.split(graph, point, bottleneck=...)``) at the interior
    points; where one cannot go (a multi-tensor cut) it lands in ``skipped`` with the reason.
    ``inputs`` (a batch, or an iterable of batches) measures bottleneck payloads with
    ``Split.encode``; plain rows send the raw cut tensors, whose size is known without running.
    Latencies follow :mod:`splitter.explore.latency` for ``link``, ``device`` and ``server``.

    **Measured sweeps.** ``data`` (``"digits"``, ``"fashion-mnist"``, an image folder, a
    Dataset, or a ``(train, test)`` pair; a single dataset gets 20 % held out) turns every
    row into a trial (:mod:`splitter.explore.trials`): each bottleneck is fitted by the
    two-stage distillation (``fit``: ``"quick"``, ``"full"`` or ``None``) at each β of
    ``betas`` (or the β bisected to hit ``rate`` bytes, e.g. ``"2kB"``), then measured on
    the held-out part: accuracy (agreement with ``teacher`` when unlabelled), payload bytes,
    device encode time of its exported bundle with ``threads`` onnxruntime threads (or from
    ``device_profile``; ``exporter`` picks the bundles' ONNX exporter, as ``splitter split
    --exporter``). Trials are stored under ``store`` (default ``runs/sweep/<model>``)
    and never rerun; ``jobs`` runs them in processes, ``ray`` on Ray Tune. ``codecs``
    (default: every installed input codec) are measured on the same data, and every curve
    gets a BD-rate against ``anchor`` (default: the best codec).
    """
    if data is not None:
        from splitter.explore.measure import measured_sweep

        if isinstance(model, str):  # one set of weights for the costs and the trials
            from splitter.compile.trace import load_model

            model = load_model(model)[0]
        analytic = sweep(model, points, bottlenecks, input_shape=input_shape, link=link, device=device,
                         server=server, plain=plain)
        return measured_sweep(
            analytic, model, data, fit=fit, teacher=teacher, betas=betas, rate=rate, store=store,
            jobs=jobs, ray=ray, threads=threads, codecs=codecs, qualities=qualities, anchor=anchor,
            eval_limit=eval_limit, device_profile=device_profile, schedules=schedules,
            batch_size=batch_size, seed=seed, export=export, exporter=exporter, input_shape=input_shape,
            progress=progress)

    graph = model if isinstance(model, Graph) else trace(model, input_shape)
    cuts = select_points(graph, points)
    specs = [BottleneckSpec.of(b) for b in (bottlenecks or [])]
    total = len(cuts) * (int(plain) + len(specs))
    bar = None
    if progress and total:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"sweep {graph.name}", unit="split", leave=False)
    try:
        rows, skipped = _analytic_rows(graph, cuts, specs, inputs, link, device, server, plain,
                                       bar.update if bar is not None else lambda: None)
    finally:
        if bar is not None:
            bar.close()
    if not rows:
        reasons = "; ".join(f"{s.point} {s.config}: {s.reason}" for s in skipped[:3])
        raise SplitterError(f"the sweep produced no rows ({reasons}); pick other points or "
                            f"bottlenecks, or keep plain=True")
    _mark_pareto(rows)
    return SweepResult(model=graph.name, input_shape=tuple(graph.input_shape), link=link,
                       device=device, server=server, rows=rows, skipped=skipped)


def _analytic_rows(graph: Graph, cuts: Sequence[CutPoint], specs: Sequence[BottleneckSpec], inputs: Any,
                   link: Link, device: Machine, server: Machine, plain: bool,
                   tick: Callable[[], Any]) -> tuple[list[SweepRow], list[Skipped]]:
    """Per cut: the plain row from the prefix sums, then one row per bottleneck that can go
    there (its payload measured on ``inputs`` when given); the others land in ``skipped``.
    ``tick`` is called once per (cut, plain or bottleneck)."""
    from splitter.compile.split import split

    table = cost_table(graph.gm)
    rows: list[SweepRow] = []
    skipped: list[Skipped] = []
    for cut in cuts:
        if plain:
            rows.append(_row(report_at(graph, cut, table=table), cut, PLAIN, link, device, server))
            tick()
        for spec in specs:
            if cut.name in ("input", "output"):  # a bottleneck needs an interior cut
                tick()
                continue
            try:
                s = split(graph, cut.name, bottleneck=spec)
                measured = measure_payload(s, inputs) if inputs is not None else None
                rep = report_at(graph, cut, s.bottleneck, s.mode, table=table, payload=measured)
            except (SplitterError, ValueError, TypeError) as e:
                # ValueError/TypeError: a kind refusing this tensor (e.g. a 1-D pooled
                # vector); the sweep goes on and says why in ``skipped``.
                skipped.append(Skipped(point=cut.name, config=spec.label,
                                       reason=f"{type(e).__name__}: {e}"))
            else:
                rows.append(_row(rep, cut, spec.label, link, device, server))
            tick()
    return rows, skipped


def _row(rep: CostReport, cut: CutPoint, config: str, link: Link, device: Machine,
         server: Machine) -> SweepRow:
    return SweepRow(**dict(rep), point=cut.name, config=config,
                    latency_ms=_latency(rep, link, device, server))
