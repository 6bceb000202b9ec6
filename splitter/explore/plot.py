"""sweep_plot: the SC2 paper's views of a sweep, drawn with matplotlib (Agg, no display).

::

    ┌ supervised R-D ───────────┬ ExR-D ─────────────────────────┐
    │ accuracy vs payload bytes │ accuracy vs enc bits × payload │   (no accuracy yet:
    ├ three-way ────────────────┼ latency ───────────────────────┤    payload bytes on y)
    │ enc size vs payload,      │ predicted latency per point,   │
    │ colour = accuracy / tail  │ best split marked              │
    └───────────────────────────┴────────────────────────────────┘

Pareto-optimal rows of each view are ringed and labelled with their point name. With
measured accuracy the R-D and ExR-D views are curves: one line per (point, bottleneck) over
its β, coloured by the point's depth, marked by bottleneck; each input codec's quality sweep
is a dashed line in R-D and sits at encoder size 0 in ExR-D (nothing runs a DNN on the
device); the teacher's accuracy is a dotted line. One legend for the whole figure, outside
the axes. Codec points far below every split's accuracy are left off the y range, and the
view says how many.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from splitter.explore.sweep import PLAIN, pareto_mask

if TYPE_CHECKING:
    from splitter.explore.sweep import SweepResult, SweepRow

__all__ = ["plot_sweep"]

_MARKERS = "osD^v<>Ph*X"
MAX_TEXT_LABELS = 6  # more Pareto labels in one view are drawn as numbers with a key


def _label(r: SweepRow) -> str:
    beta = "" if getattr(r, "beta", None) is None else f" β={r.beta:g}"
    return r.point if r.config == "plain" else f"{r.point} [{r.config}{beta}]"


_CODEC_STYLE = {"jpeg": ("tab:red", "s"), "webp": ("tab:orange", "o"), "avif": ("tab:brown", "v"),
                "heif": ("tab:pink", "P"), "jxl": ("tab:gray", "X")}


def _codec_curves(result: SweepResult) -> dict[str, list[tuple[float, float]]]:
    by: dict[str, list[tuple[float, float]]] = {}
    for c in result.codecs:
        by.setdefault(c.method, []).append((c.bytes_mean, c.accuracy))
    return {name: sorted(pts) for name, pts in by.items()}


def _codec_style(k: int, name: str) -> tuple[str, str]:
    return _CODEC_STYLE.get(name, (f"C{(k + 5) % 10}", "."))


def _codec_lines(ax, result: SweepResult, at_x: float | None = None, y_min: float | None = None) -> int:
    """Each input codec's measured accuracy-vs-bytes points as a dashed line; with ``at_x``,
    as points at that x (ExR-D: no DNN encoder). Points under ``y_min`` are left off;
    returns how many."""
    hidden = 0
    for k, (name, pts) in enumerate(_codec_curves(result).items()):
        color, marker = _codec_style(k, name)
        shown = [p for p in pts if y_min is None or p[1] >= y_min]
        hidden += len(pts) - len(shown)
        xs = [p[0] if at_x is None else at_x for p in shown]
        ax.plot(xs, [p[1] for p in shown], ls="--" if at_x is None else "none", lw=1, marker=marker,
                ms=4, mfc="none", alpha=0.85, color=color, zorder=2)
    return hidden


def _point_colors(rows: list[SweepRow]) -> dict[str, tuple]:
    """One colour per split point, by depth (execution order): dark early, light late."""
    from matplotlib import colormaps

    order = [p for _, p in sorted({(r.cut_index, r.point) for r in rows})]
    cmap = colormaps["viridis"]
    return {p: cmap(0.88 * k / max(len(order) - 1, 1)) for k, p in enumerate(order)}


def _curve_lines(ax, rows: list[SweepRow], xs: list[float], ys: list[float], colors: dict) -> None:
    """One line per (point, bottleneck config) through its rows (its β), in x order."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(rows):
        if r.config != PLAIN:
            groups.setdefault((r.point, r.config), []).append(i)
    for (point, _), idx in groups.items():
        if len(idx) > 1:
            idx.sort(key=lambda i: xs[i])
            ax.plot([xs[i] for i in idx], [ys[i] for i in idx], "-", lw=1.1, color=colors[point],
                    alpha=0.9, zorder=2.5)


def _acc_floor(rows: list[SweepRow], teacher: float | None) -> float | None:
    """The lower y limit of an accuracy view: a little under the lowest split's accuracy
    (input codecs at their lowest qualities can fall far below every split)."""
    accs = [r.accuracy for r in rows if r.accuracy is not None]
    if teacher is not None:
        accs.append(teacher)
    if not accs:
        return None
    lo, hi = min(accs), max(accs)
    return max(0.0, lo - max(0.1 * (hi - lo), 0.01))


def _accuracy_view(ax, result: SweepResult, rows: list[SweepRow], xs: list[float], configs: list[str],
                   colors: dict, codecs_at: str | None) -> None:
    """R-D or ExR-D with accuracy on y: curves per (point, config), Pareto rings, the
    teacher, and the input codecs (``codecs_at``: "curves", "zero" or None)."""
    ys = [r.accuracy for r in rows]
    front = pareto_mask([(x, -y) for x, y in zip(xs, ys)])
    drawn, _ = _scatter(ax, rows, xs, ys, front, configs, point_colors=colors)
    _curve_lines(ax, rows, drawn, ys, colors)
    floor = _acc_floor(rows, result.teacher_accuracy)
    hidden = 0
    if result.codecs and codecs_at == "curves":
        hidden = _codec_lines(ax, result, y_min=floor)
    elif result.codecs and codecs_at == "zero":
        zero = _zero_floor([r.encoder_bits * r.payload_bytes for r in rows] + [0.0])
        hidden = _codec_lines(ax, result, at_x=zero, y_min=floor)
    if result.teacher_accuracy is not None:
        ax.axhline(result.teacher_accuracy, color="black", lw=0.8, ls=":", zorder=1)
    if floor is not None:
        ax.set_ylim(bottom=floor)
    if hidden:
        ax.text(0.99, 0.01, f"{hidden} codec point{'s' if hidden > 1 else ''} below {floor:.2f} not drawn",
                transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="dimgray")


def _legend(fig, result: SweepResult, configs: list[str], colors: dict, has_acc: bool) -> None:
    """One legend for the figure: points (colour), bottlenecks (marker), codecs, teacher."""
    from matplotlib.lines import Line2D

    h = [Line2D([], [], color=c, lw=2, label=p) for p, c in colors.items()]
    h += [Line2D([], [], color="dimgray", marker=_MARKERS[k % len(_MARKERS)], ls="none", label=cfg)
          for k, cfg in enumerate(configs)]
    for k, name in enumerate(_codec_curves(result)):
        color, marker = _codec_style(k, name)
        h.append(Line2D([], [], color=color, marker=marker, mfc="none", ls="--",
                        label=f"{name.upper()} input → teacher"))
    if has_acc and result.teacher_accuracy is not None:
        h.append(Line2D([], [], color="black", ls=":", lw=0.8,
                        label=f"teacher ({100 * result.teacher_accuracy:.2f} %)"))
    h.append(Line2D([], [], marker="o", ms=10, mfc="none", mec="crimson", ls="none", label="Pareto-optimal"))
    fig.legend(handles=h, loc="center right", fontsize=8, frameon=False,
               title="colour: split point\nmarker: bottleneck", title_fontsize=8)


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
             configs: list[str], colors=None, cmap=None, point_colors: dict | None = None):
    """Rows as markers (one per config), Pareto rows ringed and labelled. Returns ``(the x
    values drawn (zeros moved to the log axis' floor), the last scatter)``. ``colors`` +
    ``cmap``: a colour scale per row; ``point_colors``: a colour per split point."""
    xs = _log_axis(ax, "x", xs)
    sc = None
    scale = {}
    if colors is not None:  # one colour scale for every config's markers
        finite = [c for c in colors if c == c]
        scale = dict(vmin=min(finite), vmax=max(finite)) if finite else {}
    for k, cfg in enumerate(configs):
        idx = [i for i, r in enumerate(rows) if r.config == cfg]
        if not idx:
            continue
        if colors is not None:
            kw = dict(c=[colors[i] for i in idx], cmap=cmap, **scale)
        elif point_colors is not None:
            kw = dict(color=[point_colors[rows[i].point] for i in idx])
        else:
            kw = {}
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
    return xs, sc


def _annotate(ax, points: list[tuple[float, float, str]], xs: list[float], ys: list[float],
              log_y: bool) -> None:
    """Label points; near-coincident ones share a label, close ones are stacked downwards.
    More than :data:`MAX_TEXT_LABELS` labels overlap whatever the offsets (the demo's
    three-way view had 14), so they become numbers with a key in the view's emptiest corner."""

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
    numbered = len(groups) > MAX_TEXT_LABELS  # too many to place: numbers, and a key
    placed: list[tuple[float, float]] = []
    keys: list[str] = []
    for n, (u, v, x, y, names) in enumerate(groups, 1):
        text = ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")
        if numbered:
            keys.append(f"{n}: {text}")
            text = str(n)
        near = 0.05 if numbered else 0.15
        k = sum(1 for pu, pv in placed if abs(pu - u) < near and abs(pv - v) < 0.05)
        placed.append((u, v))
        right = u > 0.7  # near the right edge: label to the left of the point
        ax.annotate(text, (x, y), xytext=(-8 if right else 8, 6 - 10 * k), textcoords="offset points",
                    ha="right" if right else "left", fontsize=7, color="crimson", zorder=5)
    if keys:  # the key where it covers the fewest points (the figure's own legend is outside)
        from matplotlib.lines import Line2D

        ax.legend([Line2D([], [], linestyle="none")] * len(keys), keys, loc="best", fontsize=6,
                  handlelength=0, handletextpad=0, labelcolor="crimson", framealpha=0.85,
                  title="Pareto-optimal", title_fontsize=6)


def plot_sweep(result: SweepResult, path: str, *, title: str | None = None) -> None:
    """Draw the four views of ``result`` into ``path`` (PNG); ``title`` replaces the default
    heading (model, shape, link, machines)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = list(result.rows)
    configs = list(dict.fromkeys(r.config for r in rows))
    acc_rows = [r for r in rows if r.accuracy is not None]
    has_acc = bool(acc_rows)
    colors = _point_colors(rows)

    fig, axes = plt.subplots(2, 2, figsize=(15, 9.5))
    (rd, exrd), (three, lat) = axes
    fig.suptitle(title or (
        f"{result.model} {tuple(result.input_shape)}: {len(rows)} splits, "
        f"link {result.link.name} {result.link.bandwidth_mbps:g} Mbit/s + {result.link.rtt_ms:g} ms RTT, "
        f"device {result.device.gflops:g} / server {result.server.gflops:g} GFLOP/s"), fontsize=11)

    # Supervised R-D: rate on x; accuracy (↑) or, without it, encoder size (↓) on y.
    if has_acc:
        _accuracy_view(rd, result, acc_rows, [r.payload_bytes for r in acc_rows], configs, colors, "curves")
        measured = " (measured)" if any(getattr(r, "measured", False) for r in acc_rows) else ""
        rd.set(xlabel=f"payload bytes / sample{measured}", ylabel="accuracy", title="supervised R-D")
    else:
        xs = [r.encoder_bits for r in rows]
        ys = [r.payload_bytes for r in rows]
        front = pareto_mask(list(zip(xs, ys)))
        _scatter(rd, rows, xs, ys, front, configs, point_colors=colors)
        rd.set(xlabel="encoder size (bits)", ylabel="payload bytes / sample (raw cut when unmeasured)",
               title="R-D without accuracy: payload vs encoder size")

    # ExR-D: encoder size × rate on x.
    if has_acc:
        _accuracy_view(exrd, result, acc_rows, [r.encoder_bits * r.payload_bytes for r in acc_rows], configs,
                       colors, "zero")
        exrd.set(xlabel="encoder bits × payload bytes" + (" (input codecs: no encoder, at 0)" if result.codecs
                                                           else ""),
                 ylabel="accuracy", title="ExR-D (encoder size × rate)")
    else:
        xs = [r.encoder_bits * r.payload_bytes for r in rows]
        ys = [r.payload_bytes for r in rows]
        front = pareto_mask(list(zip(xs, ys)))
        _scatter(exrd, rows, xs, ys, front, configs, point_colors=colors)
        exrd.set(xlabel="encoder bits × payload bytes", ylabel="payload bytes / sample",
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
    _, sc = _scatter(three, rows, xs, ys, front, configs, colors=colour, cmap="viridis")
    if sc is not None:
        fig.colorbar(sc, ax=three, label="accuracy" if has_acc else "tail GMACs (server)")
    three.set(xlabel="encoder size (MB, tables excluded)", ylabel="payload bytes / sample",
              title="three-way: encoder size × payload × " + ("accuracy" if has_acc else "tail cost"))

    # Latency per split, in execution order; the best one marked.
    best = result.best
    order = sorted({(r.cut_index, r.point) for r in rows})
    at = {idx: k for k, (idx, _) in enumerate(order)}  # evenly spaced, in execution order
    for k, cfg in enumerate(configs):  # a line through each config's fastest row per point
        rs = [r for r in rows if r.config == cfg]
        fastest = {}
        for r in sorted(rs, key=lambda r: -r.latency_ms):
            fastest[r.cut_index] = r
        line = [fastest[i] for i in sorted(fastest)]
        lat.plot([at[r.cut_index] for r in line], [r.latency_ms for r in line], lw=1, color="dimgray",
                 alpha=0.6, zorder=2)
        lat.scatter([at[r.cut_index] for r in rs], [r.latency_ms for r in rs], marker=_MARKERS[k % len(_MARKERS)],
                    s=22, color=[colors[r.point] for r in rs], zorder=3)
    lat.scatter([at[best.cut_index]], [best.latency_ms], s=180, marker="*", color="crimson", zorder=5,
                label=f"best: {_label(best)} ({best.latency_ms:,.1f} ms)")
    step = max(1, math.ceil(len(order) / 16))  # at most ~16 tick labels stay readable
    ticks = list(range(0, len(order), step))
    lat.set_xticks(ticks, [order[k][1] for k in ticks], rotation=35, ha="right", fontsize=7)
    if max(r.latency_ms for r in rows) / max(min(r.latency_ms for r in rows), 1e-9) > 20:
        lat.set_yscale("log")
    lat.set(xlabel="split point (execution order)", ylabel="predicted latency (ms)",
            title=f"Neurosurgeon latency over {result.link.name}: device + link + server")
    lat.grid(True, alpha=0.3)
    lat.legend(fontsize=7, loc="best")

    _legend(fig, result, configs, colors, has_acc)
    fig.tight_layout(rect=(0, 0, 0.85, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
