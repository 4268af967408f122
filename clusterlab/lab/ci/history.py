"""The run history: each CI run's figures, with its commit, branch, time, scenario and machine
fingerprint, in one SQLite file (``$CLUSTERLAB_HISTORY``, else ``.clusterlab/history.sqlite``).

Tables: ``runs`` (one row a run, its whole summary.json kept as text), ``figures`` (one row a
run × metric × group: the median over its repeats) and the view ``series`` (figures joined with
their run, oldest first), which pandas reads in one call::

    pd.read_sql_query("SELECT * FROM series", sqlite3.connect(".clusterlab/history.sqlite"))

A figure is ``trusted`` when every point behind it was (``compare``'s rule: target-bound, quiet
machine, not failed) and its run is not partial (a run is, when all its points are); ``travels`` marks the figures that cancel the
machine's speed (``TRAVELS``). Adding writes in one transaction: bad input or a failure leaves
the file as it was. The file is refused, untouched, unless it is a history of this schema.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import statistics
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from clusterlab.lab.ci import fingerprint
from clusterlab.lab.ci.compare import (
    DERIVED,
    CompareInputError,
    metric_samples,
    row_sources,
    untrusted_points,
)
from clusterlab.lab.ci.gates import groups, point_value
from clusterlab.lab.config.gates import METRICS

SCHEMA = "clusterlab.lab.history"
VERSION = 1
#: Figures that travel between machines of one kind (within-run ratios, and throughput per CPU
#: second the workers used): only these gate ``history check`` unless told otherwise.
TRAVELS = ("rps_per_cpu", "scaling_efficiency", "rr_none_ratio", "fairness.jain", "failure_ratio")
NORMALISED = {"rps_per_cpu": +1}

_DDL = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    run INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    started REAL NOT NULL,
    revision TEXT,
    branch TEXT,
    scenario TEXT NOT NULL,
    scenario_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    machine TEXT NOT NULL,
    trusted INTEGER NOT NULL,
    distrust TEXT NOT NULL,
    source TEXT,
    added TEXT NOT NULL,
    summary TEXT NOT NULL,
    UNIQUE (scenario_key, fingerprint, started)
);
CREATE TABLE figures (
    run INTEGER NOT NULL REFERENCES runs (run) ON DELETE CASCADE,
    metric TEXT NOT NULL,
    grp TEXT NOT NULL,
    value REAL,
    repeats INTEGER NOT NULL,
    low REAL,
    high REAL,
    direction INTEGER NOT NULL,
    travels INTEGER NOT NULL,
    trusted INTEGER NOT NULL,
    distrust TEXT NOT NULL,
    PRIMARY KEY (run, metric, grp)
);
CREATE VIEW series AS
    SELECT r.run, r.time, r.started, r.revision, r.branch, r.scenario, r.scenario_key,
           r.fingerprint, f.metric, f.grp AS "group", f.value, f.repeats, f.low, f.high,
           f.direction, f.travels, f.trusted, f.distrust
    FROM figures f JOIN runs r USING (run)
    ORDER BY r.started, r.run, f.metric, f.grp;
"""


class HistoryError(CompareInputError):
    """A history file or a run that cannot be used; the message is one line for the user."""


@dataclass(frozen=True)
class Record:
    """One run as the history keeps it: its ``runs`` row and its ``figures`` rows."""

    run: dict[str, Any]
    figures: list[dict[str, Any]]


def default_path() -> Path:
    return Path(os.environ.get("CLUSTERLAB_HISTORY", ".clusterlab/history.sqlite"))


# --- a run's figures ---------------------------------------------------------------------------


def _rps_per_cpu(summary: dict[str, Any]) -> dict[tuple[str, tuple[Any, ...]], list[float]]:
    """Requests per CPU second of the workers, per point: rps / (workers' CPU % / 100)."""
    out: dict[tuple[str, tuple[Any, ...]], list[float]] = {}
    for key, members in groups(summary["points"]).items():
        values = []
        for point in members:
            cpu = (point.get("cpu_pct") or {}).get("workers")
            if isinstance(cpu, int | float) and cpu > 0:
                values.append(point_value(point, "rps") / (cpu / 100))
        out[("rps_per_cpu", key)] = values
    return out


def _partial(summary: dict[str, Any]) -> bool:
    return bool(summary["run"].get("partial") or summary["run"].get("interrupted"))


def _direction(metric: str) -> int:
    return NORMALISED.get(metric) or DERIVED.get(metric) or METRICS[metric][2]


def figures(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``figures`` rows of a validated summary (without the run id)."""
    samples = {**metric_samples(summary), **_rps_per_cpu(summary)}
    distrusted = untrusted_points(summary, "run")
    keys = list(dict.fromkeys(k for _, k in samples))
    partial = ["partial run"] if _partial(summary) else []
    rows = []
    for (metric, key), values in samples.items():
        finite = [v for v in values if math.isfinite(v)]
        sources = row_sources(metric, key, keys)
        why = partial + sorted({r for d in distrusted if d.key in sources for r in d.reasons})
        rows.append(
            {
                "metric": metric,
                "grp": "/".join(map(str, key)),
                "value": statistics.median(finite) if finite else None,
                "repeats": len(finite),
                "low": min(finite, default=None),
                "high": max(finite, default=None),
                "direction": _direction(metric),
                "travels": int(metric in TRAVELS),
                "trusted": int(not why and bool(finite)),
                "distrust": "; ".join(why) if finite else "no finite value",
            }
        )
    return rows


def record(
    summary: dict[str, Any],
    source: str = "",
    revision: str | None = None,
    branch: str | None = None,
) -> Record:
    """A validated summary as the history keeps it; ``revision`` defaults to the summary's git
    revision (``unknown`` counts as none)."""
    rows = figures(summary)
    facts = summary["run"]
    started = float(facts["started"])
    why = ["partial run"] if _partial(summary) else []
    why += sorted({r for d in untrusted_points(summary, "run") for r in d.reasons})
    known = summary["machine"].get("git_revision")
    run = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "started": started,
        "revision": revision or (known if known not in (None, "unknown") else None),
        "branch": branch,
        "scenario": str(summary["scenario"].get("name")),
        "scenario_key": fingerprint.scenario_key(summary["scenario"]),
        "fingerprint": fingerprint.fingerprint(summary["machine"]),
        "machine": json.dumps(fingerprint.machine_facts(summary["machine"]), sort_keys=True),
        "trusted": int(not why),
        "distrust": "; ".join(why),
        "source": source,
        "added": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": json.dumps(summary),
    }
    return Record(run, rows)


# --- the file ----------------------------------------------------------------------------------


def _refuse(path: Path, got: object) -> HistoryError:
    return HistoryError(f"{path}: expected a clusterlab history (SQLite, {SCHEMA}), got {got}")


def _check(con: sqlite3.Connection, path: Path) -> None:
    try:
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as exc:
        raise _refuse(path, exc) from None
    if meta.get("schema") != SCHEMA or meta.get("version") != str(VERSION):
        raise _refuse(path, f"schema {meta.get('schema')!r} version {meta.get('version')!r}")


@contextmanager
def connect(path: str | Path, create: bool = False) -> Iterator[sqlite3.Connection]:
    """An open, checked history; a new one only when ``create`` and the file does not exist."""
    path = Path(path)
    new = not path.exists() or (path.is_file() and path.stat().st_size == 0)
    if new and not create:
        raise HistoryError(
            f"{path}: expected a clusterlab history, got no such file "
            "(`clusterlab history add RUN` starts one)"
        )
    if not new and not path.is_file():
        raise _refuse(path, "something that is not a file")
    if new:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = sqlite3.connect(path)
    except sqlite3.Error as exc:
        raise _refuse(path, exc) from None
    with closing(con):
        if new:
            with con:
                con.executescript(_DDL)
                con.executemany(
                    "INSERT INTO meta VALUES (?, ?)", [("schema", SCHEMA), ("version", VERSION)]
                )
        _check(con, path)
        con.execute("PRAGMA foreign_keys = ON")
        yield con


def _insert(con: sqlite3.Connection, rec: Record) -> int:
    columns = list(rec.run)
    cursor = con.execute(
        f"INSERT INTO runs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        [rec.run[c] for c in columns],
    )
    run = int(cursor.lastrowid or 0)
    names = ["run", *rec.figures[0]] if rec.figures else ["run"]
    con.executemany(
        f"INSERT INTO figures ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
        [[run, *row.values()] for row in rec.figures],
    )
    return run


def add(path: str | Path, rec: Record) -> tuple[int, bool]:
    """Append a run; (its run id, whether it was added: False when the same run, by scenario,
    fingerprint and start time, is already there)."""
    with connect(path, create=True) as con:
        try:
            with con:
                return _insert(con, rec), True
        except sqlite3.IntegrityError:
            found = con.execute(
                "SELECT run FROM runs WHERE scenario_key = ? AND fingerprint = ? AND started = ?",
                (rec.run["scenario_key"], rec.run["fingerprint"], rec.run["started"]),
            ).fetchone()
            if found is None:
                raise
            return int(found[0]), False
        except sqlite3.DatabaseError as exc:
            raise HistoryError(f"{path}: could not add the run, nothing changed: {exc}") from None


def read(path: str | Path) -> pd.DataFrame:
    """The ``series`` view: one row per run × metric × group, oldest run first."""
    with connect(path) as con:
        return pd.read_sql_query("SELECT * FROM series", con)


def series_list(path: str | Path) -> pd.DataFrame:
    """One row per (scenario, scenario_key, fingerprint): runs, trusted runs, first and last."""
    with connect(path) as con:
        return pd.read_sql_query(
            "SELECT scenario, scenario_key, fingerprint, machine, COUNT(*) AS runs, "
            "SUM(trusted) AS trusted, MIN(time) AS first, MAX(time) AS last, "
            "MAX(started) AS newest FROM runs GROUP BY scenario_key, fingerprint "
            "ORDER BY newest DESC",
            con,
        )


def frame(rec: Record, run: int = 0) -> pd.DataFrame:
    """A record not stored (``history check --with RUN``) in the shape of the ``series`` view."""
    rows = []
    for row in rec.figures:
        rows.append(
            {
                **{k: rec.run[k] for k in ("time", "started", "revision", "branch", "scenario")},
                **{k: rec.run[k] for k in ("scenario_key", "fingerprint")},
                "run": run,
                **{k: v for k, v in row.items() if k != "grp"},
                "group": row["grp"],
            }
        )
    return pd.DataFrame(rows)


def load_series(
    path: str | Path, scenario_key: str, fingerprint_id: str, last: int | None = None
) -> pd.DataFrame:
    """The series view of one (scenario key, fingerprint), its last ``last`` runs."""
    with connect(path) as con:
        data = pd.read_sql_query(
            "SELECT * FROM series WHERE scenario_key = ? AND fingerprint = ?",
            con,
            params=(scenario_key, fingerprint_id),
        )
    if last is not None and not data.empty:
        keep = data["run"].drop_duplicates().iloc[-last:]
        data = data[data["run"].isin(keep)]
    return data.reset_index(drop=True)
