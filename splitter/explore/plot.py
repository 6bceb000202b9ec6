"""sweep_plot: the SC2 paper's views of a sweep, drawn with matplotlib (Agg, no display).

::

    ┌ supervised R-D ───────────┬ ExR-D ─────────────────────────┐
    │ accuracy vs payload bytes │ accuracy vs enc bits × payload │   (no accuracy yet:
    ├ three-way ────────────────┼ latency ───────────────────────┤    payload bytes on y)
    │ enc size vs payload,      │ predicted latency per point,   │
    │ colour = accuracy / tail  │ best split marked              │
    └───────────────────────────┴────────────────────────────────┘

Pareto-optimal rows of each view are ringed and labelled with their point name.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from splitter.explore.sweep import pareto_mask

if TYPE_CHECKING:
    from splitter.explore.sweep import SweepResult, SweepRow

__all__ = ["plot_sweep"]

_MARKERS = "osD^v<>Ph*X"


def _label(r: SweepRow) -> str:
    beta = "" if getattr(r, "beta", None) is None else f" β={r.beta:g}"
    return r.point if r.config == "plain" else f"{r.point} [{r.config}{beta}]"


def _codec_lines(ax, result: SweepResult) -> None:
    """Each input codec's measured accuracy-vs-bytes points, as dashed lines."""
    by: dict[str, list] = {}
    for c in result.codecs:
        by.setdefault(c.method, []).append((c.bytes_mean, c.accuracy))
    for k, (name, pts) in enumerate(by.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], ls="--", lw=1, marker=".", ms=4, alpha=0.8,
                color=f"C{(k + 5) % 10}", label=f"{name.upper()} input → teacher", zorder=2)


def _zero_floor(values: list[float]) -> float | None:
    """A decade below the smallest positive value, where zeros are drawn on a log axis."""
    pos = [v for v in values if v > 0]
    if not pos or len(pos) == len(values):
        return None
    return 10.0 ** (math.floor(math.log10(min(pos))) - 1)


def _log_axis(ax, axis: str, values: list[float]) -> list[float]:
    """Put ``values`` on a log axis; zeros (the ``input`` split has no encoder) sit at a floor
    tick labelled ``0``. Returns the values to draw."""
    from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation

    if not any(v > 0 for v in values):
        return values
    floor = _zero_floor(values)
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    if floor is None:
        return values
    sci = LogFormatterSciNotation()
    fmt = FuncFormatter(lambda v, pos: "0" if math.isclose(v, floor, rel_tol=1e-6) else sci(v, pos))
    (ax.xaxis if axis == "x" else ax.yaxis).set_major_formatter(fmt)
    return [v if v > 0 else floor for v in values]


def _scatter(ax, rows: list[SweepRow], xs: list[float], ys: list[float], front: list[bool],
             configs: list[str], colors=None, cmap=None):
    xs = _log_axis(ax, "x", xs)
    sc = None
    for k, cfg in enumerate(configs):
        idx = [i for i, r in enumerate(rows) if r.config == cfg]
        if not idx:
            continue
        kw = dict(c=[colors[i] for i in idx], cmap=cmap) if colors is not None else {}
        sc = ax.scatter([xs[i] for i in idx], [ys[i] for i in idx], marker=_MARKERS[k % len(_MARKERS)],
                        s=28, label=cfg, zorder=3, **kw)
    on = [i for i, f in enumerate(front) if f]
    ax.scatter([xs[i] for i in on], [ys[i] for i in on], s=150, facecolors="none",
               edgecolors="crimson", linewidths=1.4, zorder=4, label="Pareto-optimal")
    log_y = all(v > 0 for v in ys) and max(ys) / max(min(ys), 1e-12) > 20
    if log_y:
        ax.set_yscale("log")
    _annotate(ax, [(xs[i], ys[i], _label(rows[i])) for i in on], xs, ys, log_y)
    ax.grid(True, which="major", alpha=0.3)
    return sc


def _annotate(ax, points: list[tuple[float, float, str]], xs: list[float], ys: list[float],
              log_y: bool) -> None:
    """Label points; near-coincident ones share a label, close ones are stacked downwards."""

    def norm(vals: list[float], log: bool):
        t = [math.log10(v) if log and v > 0 else v for v in vals]
        lo, hi = min(t), max(t)
        return lambda v: ((math.log10(v) if log and v > 0 else v) - lo) / ((hi - lo) or 1.0)

    nx, ny = norm(xs, True), norm(ys, log_y)
    groups: list[list] = []  # [u, v, x, y, [names]]
    for x, y, name in sorted(points, key=lambda p: (-p[1], p[0])):
        u, v = nx(x), ny(y)
        g = next((g for g in groups if abs(g[0] - u) < 0.02 and abs(g[1] - v) < 0.02), None)
        if g is None:
            groups.append([u, v, x, y, [name]])
        else:
            g[4].append(name)
    placed: list[tuple[float, float]] = []
    for u, v, x, y, names in groups:
        text = ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")
        k = sum(1 for pu, pv in placed if abs(pu - u) < 0.15 and abs(pv - v) < 0.05)
        placed.append((u, v))
        right = u > 0.7  # near the right edge: label to the left of the point
        ax.annotate(text, (x, y), xytext=(-8 if right else 8, 6 - 10 * k), textcoords="offset points",
                    ha="right" if right else "left", fontsize=7, color="crimson", zorder=5)


def plot_sweep(result: SweepResult, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = list(result.rows)
    configs = list(dict.fromkeys(r.config for r in rows))
    acc_rows = [r for r in rows if r.accuracy is not None]
    has_acc = bool(acc_rows)

    fig, axes = plt.subplots(2, 2, figsize=(13, 9.5))
    (rd, exrd), (three, lat) = axes
    fig.suptitle(f"{result.model} {tuple(result.input_shape)}: {len(rows)} splits, "
                 f"link {result.link.name} {result.link.bandwidth_mbps:g} Mbit/s + {result.link.rtt_ms:g} ms RTT, "
                 f"device {result.device.gflops:g} / server {result.server.gflops:g} GFLOP/s", fontsize=11)

    # Supervised R-D: rate on x; accuracy (↑) or, without it, encoder size (↓) on y.
    if has_acc:
        r_ = acc_rows
        xs = [r.payload_bytes for r in r_]
        ys = [r.accuracy for r in r_]
        front = pareto_mask([(x, -y) for x, y in zip(xs, ys)])
        _scatter(rd, r_, xs, ys, front, configs)
        if result.codecs:
            _codec_lines(rd, result)
        measured = " (measured)" if any(getattr(r, "measured", False) for r in r_) else ""
        rd.set(xlabel=f"payload bytes / sample{measured}", ylabel="accuracy", title="supervised R-D")
    else:
        xs = [r.encoder_bits for r in rows]
        ys = [r.payload_bytes for r in rows]
        front = pareto_mask(list(zip(xs, ys)))
        _scatter(rd, rows, xs, ys, front, configs)
        rd.set(xlabel="encoder size (bits)", ylabel="payload bytes / sample (raw cut when unmeasured)",
               title="R-D without accuracy: payload vs encoder size")
    rd.legend(fontsize=7, loc="best")

    # ExR-D: encoder size × rate on x.
    r_ = acc_rows if has_acc else rows
    xs = [r.encoder_bits * r.payload_bytes for r in r_]
    ys = [r.accuracy if has_acc else r.payload_bytes for r in r_]
    front = pareto_mask([(x, -y if has_acc else y) for x, y in zip(xs, ys)])
    _scatter(exrd, r_, xs, ys, front, configs)
    exrd.set(xlabel="encoder bits × payload bytes", ylabel="accuracy" if has_acc else "payload bytes / sample",
             title="ExR-D (encoder size × rate)")

    # Three-way: encoder size vs payload, coloured by accuracy or the server's work.
    xs = [r.encoder_bits / 8e6 for r in rows]
    ys = [r.payload_bytes for r in rows]
    colour = [r.accuracy if r.accuracy is not None else float("nan") for r in rows] if has_acc \
        else [r.tail_macs / 1e9 for r in rows]
    # Without accuracy the tail cost is not a third objective to ring: for plain splits it
    # falls exactly as the encoder grows, so every point would be "optimal". Colour shows it.
    third = [-(r.accuracy if r.accuracy is not None else float("-inf")) for r in rows] if has_acc \
        else [0.0] * len(rows)
    front = pareto_mask(list(zip(xs, ys, third)))
    sc = _scatter(three, rows, xs, ys, front, configs, colors=colour, cmap="viridis")
    if sc is not None:
        fig.colorbar(sc, ax=three, label="accuracy" if has_acc else "tail GMACs (server)")
    three.set(xlabel="encoder size (MB, tables excluded)", ylabel="payload bytes / sample",
              title="three-way: encoder size × payload × " + ("accuracy" if has_acc else "tail cost"))

    # Latency per split, in execution order; the best one marked.
    best = result.best
    order = sorted({(r.cut_index, r.point) for r in rows})
    at = {idx: k for k, (idx, _) in enumerate(order)}  # evenly spaced, in execution order
    for k, cfg in enumerate(configs):
        rs = sorted((r for r in rows if r.config == cfg), key=lambda r: r.cut_index)
        lat.plot([at[r.cut_index] for r in rs], [r.latency_ms for r in rs], marker=_MARKERS[k % len(_MARKERS)],
                 ms=4, lw=1, label=cfg)
    lat.scatter([at[best.cut_index]], [best.latency_ms], s=180, marker="*", color="crimson", zorder=5,
                label=f"best: {_label(best)} ({best.latency_ms:,.1f} ms)")
    step = max(1, math.ceil(len(order) / 16))  # at most ~16 tick labels stay readable
    ticks = list(range(0, len(order), step))
    lat.set_xticks(ticks, [order[k][1] for k in ticks], rotation=35, ha="right", fontsize=7)
    if max(r.latency_ms for r in rows) / max(min(r.latency_ms for r in rows), 1e-9) > 20:
        lat.set_yscale("log")
    lat.set(xlabel="split point (execution order)", ylabel="predicted latency (ms)",
            title="Neurosurgeon latency: device + link + server")
    lat.grid(True, alpha=0.3)
    lat.legend(fontsize=7, loc="best")

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
