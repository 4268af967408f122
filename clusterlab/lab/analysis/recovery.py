"""Recovery metrics of runs with faults, from events.csv and timeseries.csv alone: per injected
fault, when it took effect, when its worker's replacement listened, when throughput was back to
90 % of its fault-free level (the measured window before the first fault) and which requests
failed meanwhile; per point, their summary.

Plain frames in, plain frames out: nothing here draws or writes. Times are seconds from the
point's start of measurement (the ``t`` of both tables).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from clusterlab.lab.analysis.tables import POINT_KEYS
from clusterlab.lab.protocol import Event

#: Failure causes, as the locustfile names them (anything else counts as "other").
CAUSES = ("reset", "closed", "incomplete", "refused", "timeout", "5xx", "4xx", "other")
#: The pre-crash level is the mean throughput over this many seconds before the fault.
PRE_WINDOW_S = 2.0
#: The fault-free level needs at least this much measured window before the first fault.
MIN_FAULT_FREE_S = 1.0
#: Throughput counts as back once a span this long has a mean of RECOVERED × the level.
SPAN_S = 0.5
RECOVERED = 0.9
#: Exits later than this after the measured window are the target being stopped.
STOP_MARGIN_S = 1.0
#: Signals sent by the primary act at once; other faults act when the worker reports them.
_AT_ONCE = ("SIGKILL", "SIGTERM", "SIGSTOP")

FAULT_COLUMNS = POINT_KEYS + [
    "fault",
    "kind",
    "how",
    "worker",
    "slot",
    "t_fault",
    "t_effect",
    "exit_kind",
    "t_exit",
    "t_hang_detected",
    "replacement",
    "t_listening",
    "to_listening_s",
    "pre_rps",
    "fault_free_rps",
    "to_recover_s",
    "recovered",
    "recovery",
    "failures",
    *[f"fail_{c}" for c in CAUSES],
]


def detail(text: Any) -> dict[str, Any]:
    """An events.csv ``detail`` cell as a dict (empty cells are empty dicts)."""
    if not isinstance(text, str) or not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def throughput(series: pd.DataFrame) -> pd.Series:
    """Successful requests/s per 100 ms bin (index: bin end) from a point's ``ok_100ms`` rows."""
    ok = series[(series["source"] == "locust") & (series["series"] == "ok_100ms")]
    if ok.empty:
        return pd.Series(dtype=float)
    ok = ok.sort_values("t")
    times = ok["t"].to_numpy(dtype=float)
    width = float(np.median(np.diff(times))) if len(times) > 1 else 0.1
    return pd.Series(ok["value"].to_numpy(dtype=float) / width, index=times)


def pre_crash_level(rps: pd.Series, crash: float) -> float:
    """Mean of the bins that ended in the PRE_WINDOW_S seconds before ``crash`` (NaN with less
    than half of that window covered). A mean, not a median: with slow requests answered in
    waves most 100 ms bins can be empty."""
    before = rps[(rps.index > crash - PRE_WINDOW_S) & (rps.index <= crash + 1e-9)]
    width = _width(rps)
    if len(before) * width < PRE_WINDOW_S / 2:
        return math.nan
    return float(before.mean())


def fault_free_level(rps: pd.Series, first_fault: float) -> float:
    """Mean throughput of the measured window before the first fault took effect (NaN when
    that is shorter than MIN_FAULT_FREE_S): the level every crash is measured against, so a
    cluster that never regains it after one crash does not read as recovered after the next."""
    if not math.isfinite(first_fault) or first_fault < MIN_FAULT_FREE_S:
        return math.nan
    calm = rps[(rps.index > 0) & (rps.index <= first_fault + 1e-9)]
    if len(calm) * _width(rps) < MIN_FAULT_FREE_S / 2:
        return math.nan
    return float(calm.mean())


def time_to_recover(rps: pd.Series, crash: float, until: float, level: float) -> float:
    """Seconds from ``crash`` to the start of the first SPAN_S-long run of bins (from the crash
    on, ending by ``until``) whose mean is at least RECOVERED × ``level``; 0 when throughput
    never fell that low, NaN when it was not back by ``until`` or there is no level."""
    if not math.isfinite(level) or level <= 0:
        return math.nan
    width = _width(rps)
    span = max(1, round(SPAN_S / width))
    after = rps[(rps.index > crash) & (rps.index <= until + 1e-9)]
    mean = after.rolling(span, min_periods=span).mean()
    back = mean[mean >= RECOVERED * level]
    if back.empty:
        return math.nan
    start = float(back.index[0]) - span * width
    return max(0.0, start - crash)


def failure_burst(series: pd.DataFrame, crash: float, until: float) -> dict[str, float]:
    """Failed requests per cause in the bins that ended after ``crash`` and by ``until`` (the
    next fault's effect, or the end of measurement)."""
    fails = series[(series["source"] == "locust") & (series["series"] == "fail_100ms")]
    inside = fails[(fails["t"] > crash) & (fails["t"] <= until + 1e-9)]
    counts = dict.fromkeys(CAUSES, 0.0)
    for cause, value in inside.groupby("key")["value"].sum().items():
        counts[str(cause) if str(cause) in counts else "other"] += float(value)
    return counts


def faults(events: pd.DataFrame, timeseries: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """One row per injected fault of every measured point (columns FAULT_COLUMNS)."""
    rows: list[dict[str, Any]] = []
    done = results[results["status"] == "ok"] if not results.empty else results
    for row in done.to_dict("records"):
        keys = {k: row[k] for k in POINT_KEYS}
        mine = events[(events["point"] == row["point"]) & (events["repeat"] == row["repeat"])]
        series = timeseries[
            (timeseries["point"] == row["point"]) & (timeseries["repeat"] == row["repeat"])
        ]
        rows += _point_faults(keys, mine, series, float(row["window_s"]))
    return pd.DataFrame(rows, columns=FAULT_COLUMNS)


def _point_faults(
    keys: dict[str, Any], events: pd.DataFrame, series: pd.DataFrame, window: float
) -> list[dict[str, Any]]:
    injected = events[events["event"] == Event.FAULT].sort_values("t")
    if injected.empty:
        return []
    fired = {detail(e["detail"]).get("id"): e["t"] for e in _records(events, Event.FAULT_FIRED)}
    rps = throughput(series)
    found = []
    records = injected.to_dict("records")
    for i, fault in enumerate(records):
        info = detail(fault["detail"])
        at_once = info.get("how") in _AT_ONCE or fault["kind"] in ("exit", "slow")
        effect = float(fault["t"]) if at_once else float(fired.get(info.get("id"), math.nan))
        # an exit after the next fault into the same worker is that fault's doing
        later = [f["t"] for f in records[i + 1 :] if str(f["worker"]) == str(fault["worker"])]
        until = min(later[0] if later else math.inf, window + STOP_MARGIN_S)
        found.append({**keys, **_aftermath(fault, info, effect, events, until)})
    _recoveries(found, rps, series, window)
    return found


def _recoveries(
    found: list[dict[str, Any]], rps: pd.Series, series: pd.DataFrame, window: float
) -> None:
    """Each fault's recovery against the point's fault-free level, and its failure burst."""
    effects = sorted(f["t_effect"] for f in found if math.isfinite(f["t_effect"]))
    level = fault_free_level(rps, effects[0] if effects else math.nan)
    for f in found:
        crash = f["t_effect"]
        if not math.isfinite(crash):
            f.update(recovered=False, failures=math.nan, recovery="never fired")
            continue
        later = [t for t in effects if t > crash]
        until = min(later[0] if later else window, window)
        recover = time_to_recover(rps, crash, until, level)
        burst = failure_burst(series, crash, until)
        if not math.isfinite(level):
            status = "no fault-free window"
        elif math.isfinite(recover):
            status = "back"
        else:
            status = "not back before the next fault" if later else "never back within the run"
        f.update(
            pre_rps=pre_crash_level(rps, crash),
            fault_free_rps=level,
            to_recover_s=recover,
            recovered=math.isfinite(recover),
            recovery=status,
            failures=sum(burst.values()),
            **{f"fail_{c}": n for c, n in burst.items()},
        )


def _aftermath(
    fault: dict[str, Any], info: dict[str, Any], effect: float, events: pd.DataFrame, until: float
) -> dict[str, Any]:
    """What happened to the fault's worker: its exit, a hang detection, its slot's replacement.
    Its exit counts when the fault can explain it: not a clean one (unless the fault was an
    exit, with status 0), and before ``until`` (the next fault into the same worker, or a
    second after the measured window: later exits are the target being stopped)."""
    worker, slot = str(fault["worker"]), fault["slot"]
    exits = [
        e
        for e in _records(events, Event.EXIT)
        if str(e["worker"]) == worker
        and e["t"] < until
        and (e["kind"] != "clean" or fault["kind"] == "exit")
    ]
    hangs = [
        e
        for e in _records(events, Event.HANG_DETECTED)
        if str(e["worker"]) == worker and e["t"] < until
    ]
    out: dict[str, Any] = {
        "fault": info.get("id"),
        "kind": fault["kind"],
        "how": info.get("how"),
        "worker": worker,
        "slot": slot,
        "t_fault": float(fault["t"]),
        "t_effect": effect,
        "exit_kind": exits[0]["kind"] if exits else None,
        "t_exit": float(exits[0]["t"]) if exits else math.nan,
        "t_hang_detected": float(hangs[0]["t"]) if hangs else math.nan,
        "replacement": None,
        "t_listening": math.nan,
        "to_listening_s": math.nan,
    }
    if not exits:
        return out
    listening = [
        e
        for e in _records(events, Event.LISTENING)
        if e["slot"] == slot and e["t"] > out["t_exit"] and str(e["worker"]) != worker
    ]
    if listening and math.isfinite(effect):
        out.update(
            replacement=str(listening[0]["worker"]),
            t_listening=float(listening[0]["t"]),
            to_listening_s=float(listening[0]["t"]) - effect,
        )
    return out


def points(events: pd.DataFrame, per_fault: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """One row per measured point that had faults: how many were injected, took effect,
    crashed a worker and were replaced; times to listening and to 90 % (median, max);
    failed requests while recovering (total, per cause); round-robin connections requeued and
    lost; restarts, refused restarts, whether the restart limit was reached, hangs detected."""
    rows = []
    done = results[results["status"] == "ok"] if not results.empty else results
    for row in done.to_dict("records"):
        keys = {k: row[k] for k in POINT_KEYS}
        mine = events[(events["point"] == row["point"]) & (events["repeat"] == row["repeat"])]
        # restarts a last fault causes may come just after the window; the stop's exits are
        # clean and never restarted, so counting on to the end adds nothing else
        window = mine[mine["t"] >= 0]
        fs = per_fault[
            (per_fault["point"] == row["point"]) & (per_fault["repeat"] == row["repeat"])
        ]
        skipped = int((window["event"] == Event.FAULT_SKIPPED).sum())
        if fs.empty and not skipped:
            continue
        took = fs[np.isfinite(fs["t_effect"].astype(float))]
        crashed = took[took["exit_kind"].notna()]
        counts = window["event"].value_counts()
        rows.append(
            {
                **keys,
                "faults": len(fs),
                "skipped": skipped,
                "took_effect": len(took),
                "crashes": len(crashed),
                "replaced": int(crashed["replacement"].notna().sum()),
                "to_listening_median_s": _stat(crashed["to_listening_s"], "median"),
                "to_listening_max_s": _stat(crashed["to_listening_s"], "max"),
                "recovered": int(took["recovered"].astype(bool).sum()),
                "never_back": int((took["recovery"] == "never back within the run").sum()),
                "fault_free_rps": _stat(took["fault_free_rps"], "median"),
                "to_recover_median_s": _stat(took["to_recover_s"], "median"),
                "to_recover_max_s": _stat(took["to_recover_s"], "max"),
                "failures": float(took["failures"].sum()),
                "failures_per_fault_median": _stat(took["failures"], "median"),
                **{f"fail_{c}": float(took[f"fail_{c}"].sum()) for c in CAUSES},
                "rr_requeued": row.get("rr_requeued", math.nan),
                "rr_dropped": row.get("rr_dropped", math.nan),
                "restarts": int(counts.get(Event.RESTART_SCHEDULED, 0)),
                "refused": int(counts.get(Event.RESTART_REFUSED, 0)),
                "limit_reached": bool(counts.get(Event.RESTART_LIMIT, 0)),
                "hangs_detected": int(counts.get(Event.HANG_DETECTED, 0)),
            }
        )
    return pd.DataFrame(rows)


def _records(events: pd.DataFrame, name: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = (
        events[events["event"] == name].sort_values("t").to_dict("records")
    )
    return found


def _stat(values: pd.Series, how: str) -> float:
    finite = pd.to_numeric(values, errors="coerce").dropna()
    return float(getattr(finite, how)()) if not finite.empty else math.nan


def _width(rps: pd.Series) -> float:
    times = np.asarray(rps.index, dtype=float)
    return float(np.median(np.diff(times))) if len(times) > 1 else 0.1
