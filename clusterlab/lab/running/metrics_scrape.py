"""A url target's per-worker counts from its clusterlab primary's /metrics (``target.metrics``):
scraped before and after each window, in the shape the lab's own targets answer over the
channel (requests and connections per worker id), and its hand-off counters."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from clusterlab.lab.running.targets import TargetError

#: Seconds one scrape may take.
TIMEOUT = 5.0
_HANDOFF = ("accepted", "handed", "requeued", "dropped", "policy_errors")


@dataclass(frozen=True)
class Scrape:
    """One scrape: per worker id, its counts at ``t``; the hand-off totals (None: no endpoint
    is handed off by the primary, as under the none and reuseport policies)."""

    workers: dict[str, dict[str, Any]]
    handoff: dict[str, int] | None
    #: CPU seconds so far by (role, key): ("primary", "0") and ("worker", worker id)
    cpu_s: dict[tuple[str, str], float] = field(default_factory=dict)
    #: CPUs the target's primary may use on its host (None: an endpoint without the figure)
    host_cpus: int | None = None


def scrape(url: str) -> Scrape:
    """Read `url` now; TargetError naming it when it does not answer Prometheus text."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:
            text = answer.read().decode()
        families = list(text_string_to_metric_families(text))
    except (OSError, ValueError, urllib.error.URLError) as exc:
        raise TargetError(f"target.metrics {url}: expected Prometheus metrics, got {exc}") from None
    at = time.time()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in families:
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return Scrape(_workers(samples, at), _handoff(samples), _cpu(samples), _host_cpus(samples))


def _cpu(
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]],
) -> dict[tuple[str, str], float]:
    found = {
        ("worker", dict(labels)["worker"]): value
        for labels, value in samples.get("clusterlab_worker_cpu_seconds_total", {}).items()
        if "worker" in dict(labels)
    }
    for value in samples.get("clusterlab_primary_cpu_seconds_total", {}).values():
        found[("primary", "0")] = value
    return found


def _host_cpus(samples: dict[str, dict[tuple[tuple[str, str], ...], float]]) -> int | None:
    values = list(samples.get("clusterlab_host_cpus", {}).values())
    return int(values[0]) if values else None


def _workers(
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]], at: float
) -> dict[str, dict[str, Any]]:
    workers: dict[str, dict[str, Any]] = {}
    for name, key in (
        ("clusterlab_worker_requests_total", "requests"),
        ("clusterlab_worker_connections_handed_total", "connections"),
    ):
        for labels, value in samples.get(name, {}).items():
            worker = dict(labels).get("worker")
            if worker is not None:
                workers.setdefault(worker, {"t": at})[key] = int(value)
    # only workers whose servers count their requests (a raw socket's counts nothing)
    return {w: counts for w, counts in workers.items() if "requests" in counts}


def _handoff(samples: dict[str, dict[tuple[tuple[str, str], ...], float]]) -> dict[str, int] | None:
    if not samples.get("clusterlab_handoff_handed_total"):
        return None
    totals = {
        field: int(sum(samples.get(f"clusterlab_handoff_{field}_total", {}).values()))
        for field in _HANDOFF
    }
    return {**totals, "queued": int(sum(samples.get("clusterlab_handoff_queued", {}).values()))}
