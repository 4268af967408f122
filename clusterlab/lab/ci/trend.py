"""``clusterlab history check``: every metric × group series of one history judged at once, with
the outcomes and exit statuses of ``compare``.

Per series (trusted runs only, oldest first): the change points (``changepoints.py``), each a
**regression** or an **improvement** by the metric's direction, with its size and the commits
between the last run before it and the first run after; and the newest run against the runs since
the last change point (σ rule). A series gates when its figure travels between machines
(``history.TRAVELS``), or every figure when ``absolute`` is set.

* **regression** (exit 1): a gated series has a regression change point among its last ``recent``
  runs, or its newest run is an outlier on the worse side (beyond ``sigmas`` and ``min_change``);
* **inconclusive** (3): no regression, but a gated series has fewer than ``min_runs`` trusted
  runs, or its newest run is untrusted (or nothing gates);
* **unchanged** (0): otherwise. Older change points are reported and do not fail the check: a
  regression fails ``recent`` checks, then its level is the series' new normal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from clusterlab.lab.ci import changepoints as cp
from clusterlab.lab.ci.compare import EXIT_STATUS

DEFAULT_LAST = 100
DEFAULT_RECENT = 10
DEFAULT_MIN_RUNS = 10


@dataclass(frozen=True)
class Settings:
    last: int = DEFAULT_LAST
    alpha: float = cp.DEFAULT_ALPHA
    min_size: int = cp.DEFAULT_MIN_SIZE
    min_change: float = cp.DEFAULT_MIN_CHANGE
    recent: int = DEFAULT_RECENT
    min_runs: int = DEFAULT_MIN_RUNS
    sigmas: float = cp.SIGMAS
    absolute: bool = False


@dataclass(frozen=True)
class Change:
    """A change point of one series, placed among the runs."""

    point: cp.ChangePoint
    kind: str  # regression | improvement
    run: int  # the first run at the new level
    revisions: tuple[str | None, str | None]  # last revision before, first after
    position: int  # runs from the newest: 0 = the newest run
    open: bool  # among the last ``recent`` runs: it fails the check when a regression

    @property
    def commits(self) -> str:
        before, after = self.revisions
        return f"{before or '?'}..{after or '?'}"


@dataclass(frozen=True)
class SeriesCheck:
    metric: str
    group: str
    direction: int
    gating: bool
    runs: list[int]  # trusted runs, oldest first
    values: list[float]
    revisions: list[str | None]
    untrusted: int  # runs of the window left out
    changes: list[Change] = field(default_factory=list)
    latest: cp.Outlier | None = None
    latest_kind: str = ""  # regression | improvement | "" (within sigmas)
    status: str = "judged"  # judged | too short | newest untrusted

    @property
    def name(self) -> str:
        return f"{self.metric} {self.group}"

    @property
    def regressed(self) -> bool:
        return self.gating and (
            self.latest_kind == "regression"
            or any(c.open and c.kind == "regression" for c in self.changes)
        )

    @property
    def undecided(self) -> bool:
        return self.gating and self.status != "judged"


@dataclass
class HistoryCheck:
    scenario: str
    fingerprint: str
    settings: Settings
    series: list[SeriesCheck]
    runs: int  # runs in the window
    newest: str = ""  # the newest run's revision or "this run"

    @property
    def outcome(self) -> str:
        gated = [s for s in self.series if s.gating]
        if any(s.regressed for s in gated):
            return "regression"
        if not gated or any(s.undecided for s in gated):
            return "inconclusive"
        return "unchanged"

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS[self.outcome]


def _kind(direction: int, change: float) -> str:
    return "regression" if (change < 0) == (direction > 0) else "improvement"


def _changes(s: SeriesCheck, settings: Settings) -> list[Change]:
    out = []
    for point in cp.change_points(s.values, settings.alpha, settings.min_size, settings.min_change):
        position = len(s.values) - 1 - point.index
        out.append(
            Change(
                point,
                _kind(s.direction, point.change),
                s.runs[point.index],
                (s.revisions[point.index - 1], s.revisions[point.index]),
                position,
                position < settings.recent,
            )
        )
    return out


def _latest(s: SeriesCheck, settings: Settings) -> tuple[cp.Outlier | None, str]:
    since = s.changes[-1].point.index if s.changes else 0
    outlier, beyond = cp.latest_outlier(s.values, since, sigmas=settings.sigmas)
    if outlier is None or not beyond or abs(outlier.change) < settings.min_change:
        return outlier, ""
    return outlier, _kind(s.direction, outlier.change)


def judge_series(data: pd.DataFrame, settings: Settings) -> SeriesCheck:
    """One metric × group: its rows of the series view, oldest first."""
    good = data[(data["trusted"] == 1) & data["value"].map(_finite)]
    first = data.iloc[0]
    s = SeriesCheck(
        metric=str(first["metric"]),
        group=str(first["group"]),
        direction=int(first["direction"]),
        gating=bool(first["travels"]) or settings.absolute,
        runs=[int(r) for r in good["run"]],
        values=[float(v) for v in good["value"]],
        revisions=[None if pd.isna(r) else str(r) for r in good["revision"]],
        untrusted=len(data) - len(good),
    )
    if data.iloc[-1]["run"] not in set(good["run"]):
        return _finish(s, settings, "newest untrusted")
    if len(s.values) < settings.min_runs:
        return _finish(s, settings, "too short")
    return _finish(s, settings, "judged")


def _finish(s: SeriesCheck, settings: Settings, status: str) -> SeriesCheck:
    changes = _changes(s, settings) if len(s.values) >= 2 * settings.min_size else []
    with_changes = SeriesCheck(**{**s.__dict__, "changes": changes, "status": status})
    if status == "newest untrusted":
        return with_changes
    latest, kind = _latest(with_changes, settings)
    return SeriesCheck(**{**with_changes.__dict__, "latest": latest, "latest_kind": kind})


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def check(data: pd.DataFrame, settings: Settings, newest: str = "") -> HistoryCheck:
    """Judge every metric × group of one series view (one scenario key and fingerprint)."""
    if data.empty:
        return HistoryCheck("", "", settings, [], 0, newest)
    data = data.sort_values(["started", "run"], kind="stable")
    keep = data["run"].drop_duplicates().iloc[-settings.last :]
    data = data[data["run"].isin(keep)]
    series = [
        judge_series(rows, settings)
        for _, rows in data.groupby(["metric", "group"], sort=False, dropna=False)
    ]
    first = data.iloc[0]
    return HistoryCheck(
        str(first["scenario"]), str(first["fingerprint"]), settings, series, len(keep), newest
    )
