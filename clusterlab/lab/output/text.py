"""Numbers and tables as text, for every output that prints one (report, compare, gates,
baselines, benchmarks): one way to format a value, tables drawn by ``tabulate``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
from tabulate import tabulate

MISSING = "–"


def fmt(value: Any, digits: int = 1) -> str:
    """A value for a table cell: floats with thousands separators and ``digits`` decimals,
    missing or infinite values as "–"."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (floats formatted by ``fmt``; "|" escaped)."""
    rows = [
        [(fmt(v) if isinstance(v, float) else str(v)).replace("|", "\\|") for v in row]
        for row in frame.itertuples(index=False)
    ]
    headers = [str(c).replace("|", "\\|") for c in frame.columns]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A fixed-width table for terminals and CI logs."""
    cells = [[MISSING if v is None else str(v) for v in row] for row in rows]
    return tabulate(cells, headers=list(headers), tablefmt="simple", disable_numparse=True)
