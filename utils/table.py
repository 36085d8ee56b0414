"""Plain-text tables (GitHub markdown) for the model tools and benchmarks."""
from __future__ import annotations

from typing import Any, Sequence


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; columns whose cells are all numbers (or blank) are right-aligned."""
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in row] for row in rows]
    numeric = [all(_is_number(row[c]) for row in cells[1:]) for c in range(len(headers))]
    widths = [max(len(row[c]) for row in cells) for c in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(row, widths, numeric)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def _is_number(text: str) -> bool:
    text = text.replace(",", "").rstrip("x%").rstrip(" KMGT").strip()
    if not text:
        return True
    try:
        float(text)
        return True
    except ValueError:
        return False


def human(n: float, unit: str = "") -> str:
    """``1234567 -> '1.23 M'``: three significant digits and a K/M/G/T prefix."""
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {prefix}{unit}"
    return f"{n:.3g} {unit}".rstrip()
