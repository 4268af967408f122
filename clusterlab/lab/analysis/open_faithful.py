"""Whether an open-model point ran the load it was asked for.

An open-model point paced below capacity (``load.rate = "75%"``) is by design not saturating the
target: its verdict is "unsaturated", and the target-bound verdict belongs to the capacity probe
that set its rate. What such a point must show instead is that its latencies answer the question
asked: the arrivals came at the asked rate (within ``RATE_TOLERANCE``), few were sent late
because their user was still waiting (at most ``LATE_MAX`` of them: otherwise the generator, not
the schedule, paced the load), and no load process was at its CPU limit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

#: The achieved arrival rate may differ from the asked one by this share.
RATE_TOLERANCE = 0.05
#: At most this share of the window's arrivals may be sent late.
LATE_MAX = 0.01


def faithful(row: Mapping[str, Any]) -> tuple[bool | None, str]:
    """(True/False, why) for a finished open-model point; (None, "") for any other point.

    The achieved rate is the arrivals sent inside the measured window per second (locust's
    request count also holds each user's last request, sent after the stop)."""
    asked = _number(row.get("offered_rps"))
    arrivals = _number(row.get("arrivals"))
    window = _number(row.get("window_s"))
    if row.get("status") != "ok" or math.isnan(asked) or math.isnan(arrivals) or not window > 0:
        return None, ""
    achieved = arrivals / window
    late = _number(row.get("late_arrivals"))
    late_share = (late if not math.isnan(late) else 0.0) / arrivals if arrivals else 1.0
    off = abs(achieved - asked) / asked if asked > 0 else math.inf
    said = (
        f"{achieved:.0f} of {asked:.0f} req/s asked ({100 * (achieved / asked - 1):+.1f}%), "
        f"{100 * late_share:.1f}% late"
    )
    problems = []
    if off > RATE_TOLERANCE:
        problems.append(f"rate off by more than {100 * RATE_TOLERANCE:g}%")
    if late_share > LATE_MAX:
        problems.append(f"more than {100 * LATE_MAX:g}% late")
    if row.get("verdict") == "generator":
        problems.append("the load generator at its CPU limit")
    if problems:
        return False, f"{said}: {', '.join(problems)}"
    return True, said


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number
