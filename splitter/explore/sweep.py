"""sweep: cost every split point of a model (with and without bottlenecks) and pick the best.

::

    model ─► trace + annotate (one run) ─► CostTable (prefix sums, once)
                                              │
       for each point:  plain row  ◄──────────┘  O(1): read the sums, nothing runs
                        bottleneck rows ◄── split(graph, point, bottleneck=kind) per point
       every row: + predicted latency (splitter.explore.latency)  ─►  SweepResult (.rows .to_csv .plot)

``accuracy`` is empty until a trainer fills it (``SweepResult.set_accuracy``); the plots
use it when present.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict
from torch import nn

from passes.cuts import CutPoint
from splitter.compile.costs import CostReport, cost_table, measure_payload, report_at
from splitter.compile.trace import Graph, trace
from splitter.errors import ConfigError, SplitterError
from splitter.explore.latency import DEVICE, LTE, SERVER, Link, Machine, latency_ms

__all__ = ["sweep", "SweepResult", "SweepRow", "Skipped", "BottleneckSpec", "select_points", "pareto_mask"]

PLAIN = "plain"


class BottleneckSpec(BaseModel):
    """A bottleneck to try at every point: ``kind`` plus its options (``crbq:channels=12``)."""

    model_config = ConfigDict(frozen=True)

    kind: str
    mode: str = "insert"
    options: dict[str, Any] = {}

    @property
    def label(self) -> str:
        opts = ({"mode": self.mode} if self.mode != "insert" else {}) | dict(self.options)
        return self.kind + (":" + ",".join(f"{k}={v}" for k, v in opts.items()) if opts else "")

    @classmethod
    def parse(cls, text: str) -> BottleneckSpec:
        """``KIND[:k=v,...]``; values become int, float or bool where they read as one."""
        kind, _, rest = text.partition(":")
        if not kind.strip():
            raise ConfigError(f"bottleneck spec {text!r} has no kind; write e.g. crbq:channels=12")
        opts: dict[str, Any] = {}
        for item in filter(None, (s.strip() for s in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise ConfigError(f"bottleneck option {item!r} in {text!r} is not key=value; "
                                  f"write e.g. {kind}:channels=12,mode=replace")
            opts[key.strip()] = _scalar(value.strip())
        mode = str(opts.pop("mode", "insert"))
        return cls(kind=kind.strip(), mode=mode, options=opts)

    @classmethod
    def of(cls, spec: str | dict | tuple | BottleneckSpec) -> BottleneckSpec:
        if isinstance(spec, BottleneckSpec):
            return spec
        if isinstance(spec, str):
            return cls.parse(spec)
        if isinstance(spec, dict):
            opts = dict(spec)
            kind = opts.pop("kind", None)
            if kind is None:
                raise ConfigError(f"bottleneck spec {spec!r} needs a 'kind' key")
            return cls(kind=kind, mode=opts.pop("mode", "insert"), options=opts)
        if isinstance(spec, tuple) and len(spec) == 2:
            return cls.of({"kind": spec[0], **spec[1]})
        raise ConfigError(f"cannot read bottleneck spec {spec!r}; use 'kind:k=v,...', "
                          f"{{'kind': ..., ...}} or (kind, options)")


def _scalar(v: str) -> Any:
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


class SweepRow(CostReport):
    """One (point, bottleneck) of a sweep: its :class:`CostReport`, latency and accuracy."""

    point: str
    config: str = PLAIN  # "plain" or the bottleneck spec's label
    latency_ms: float
    accuracy: float | None = None
    pareto: bool = False  # on the encoder-size / payload (/ accuracy) front


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

    # -- picking ------------------------------------------------------------------------
    @property
    def best(self) -> SweepRow:
        """The row with the lowest predicted latency (ties: the earlier cut)."""
        return min(self.rows, key=lambda r: (r.latency_ms, r.cut_index))

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
            r.latency_ms = _latency(r, out.link, out.device, out.server)
        return out

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
        front = ["point", "config", "latency_ms", "accuracy", "pareto"]
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
        """Draw the SC2 views (R-D, ExR-D, three-way) and the latencies into ``path`` (PNG)."""
        from splitter.explore.plot import plot_sweep

        plot_sweep(self, path)
        return path

    def table(self) -> str:
        """A terminal table, best row marked ``*`` and Pareto rows ``p``."""
        from splitter._text import table

        best = self.best
        rows = []
        for r in self.rows:
            flag = ("*" if r is best else "") + ("p" if r.pareto else "")
            rows.append([r.point, r.config, f"{r.encoder_params / 1e6:.3f}", f"{r.encoder_macs / 1e9:.3f}",
                         f"{r.encoder_bits / 8e6:.2f}", f"{r.payload_bytes:,.0f}",
                         f"{r.tail_macs / 1e9:.3f}", f"{r.latency_ms:,.1f}",
                         "" if r.accuracy is None else f"{r.accuracy:.3f}", flag])
        return table(rows, ["point", "bottleneck", "enc Mparams", "enc GMACs", "enc MB",
                            "payload B", "tail GMACs", "latency ms", "acc", ""])


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


def _latency(r: CostReport, link: Link, device: Machine, server: Machine) -> float:
    return latency_ms(r.encoder_flops, r.payload_bytes, r.tail_flops, link=link, device=device, server=server)


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
) -> SweepResult:
    """Cost ``model`` split at every point of ``points``, plain and with each bottleneck.

    The model is traced once (or pass a traced :class:`Graph`); plain rows read the graph's
    prefix sums, so sweeping every cut costs about one forward pass. Each bottleneck row
    builds that split (``splitter.split(graph, point, bottleneck=...)``) at the interior
    points; where one cannot go (a multi-tensor cut) it lands in ``skipped`` with the reason.
    ``inputs`` (a batch, or an iterable of batches) measures bottleneck payloads with
    ``Split.encode``; plain rows send the raw cut tensors, whose size is known without running.
    Latencies follow :mod:`splitter.explore.latency` for ``link``, ``device`` and ``server``.
    """
    from splitter.compile.split import split

    graph = model if isinstance(model, Graph) else trace(model, input_shape)
    cuts = select_points(graph, points)
    specs = [BottleneckSpec.of(b) for b in (bottlenecks or [])]
    table = cost_table(graph.gm)
    rows: list[SweepRow] = []
    skipped: list[Skipped] = []

    total = len(cuts) * (int(plain) + len(specs))
    bar = None
    if progress and total:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"sweep {graph.name}", unit="split", leave=False)
    try:
        for cut in cuts:
            if plain:
                rows.append(_row(report_at(graph, cut, table=table), cut, PLAIN, link, device, server))
                if bar is not None:
                    bar.update()
            for spec in specs:
                if cut.name in ("input", "output"):  # a bottleneck needs an interior cut
                    if bar is not None:
                        bar.update()
                    continue
                try:
                    s = split(graph, cut.name, bottleneck=spec.kind, mode=spec.mode, **spec.options)
                    measured = measure_payload(s, inputs) if inputs is not None else None
                    rep = report_at(graph, cut, s.bottleneck, s.mode, table=table, payload=measured)
                except (SplitterError, ValueError, TypeError) as e:
                    # ValueError/TypeError: a kind refusing this tensor (e.g. a 1-D pooled
                    # vector); the sweep goes on and says why in ``skipped``.
                    skipped.append(Skipped(point=cut.name, config=spec.label,
                                           reason=f"{type(e).__name__}: {e}"))
                else:
                    rows.append(_row(rep, cut, spec.label, link, device, server))
                if bar is not None:
                    bar.update()
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


def _row(rep: CostReport, cut: CutPoint, config: str, link: Link, device: Machine,
         server: Machine) -> SweepRow:
    return SweepRow(**dict(rep), point=cut.name, config=config,
                    latency_ms=_latency(rep, link, device, server))
