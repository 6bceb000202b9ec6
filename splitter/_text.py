"""Plain-text tables for terminals and logs (a leaf: no imports beyond the standard library)."""

from __future__ import annotations

__all__ = ["table"]


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain aligned table; numbers right-aligned."""
    cols = list(zip(header, *rows)) if rows else [(h,) for h in header]
    widths = [max(len(str(c)) for c in col) for col in cols]

    def fmt(row: list[str]) -> str:
        cells = []
        for v, w in zip(row, widths):
            s = str(v)
            cells.append(s.rjust(w) if _numeric(s) else s.ljust(w))
        return "  ".join(cells).rstrip()

    lines = [fmt(header), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows]
    return "\n".join(lines)


def _numeric(s: str) -> bool:
    try:
        float(s.replace(",", ""))
        return True
    except ValueError:
        return False
