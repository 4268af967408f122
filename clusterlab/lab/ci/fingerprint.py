"""What keeps a run history's series apart: the machine fingerprint (CPU model, cores, Python,
kernel) and the scenario key (the scenario's name and how it measures). Runs are compared over
time only within one (scenario key, fingerprint) pair; see ``docs/ci-history.md``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

#: The scenario fields that decide how a run measures: a change in any starts a new series.
#: Left out: the target's paths and the request URLs (the code under test; a changed ``?ms=`` is
#: what a history should see as a change), and the description, report and gates.
SCENARIO_FIELDS = ("sweep", "load", "cpus", "faults", "respawn")


def _digest(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _major_minor(version: Any) -> str | None:
    """``3.11`` of ``3.11.2``, ``6.18`` of ``6.18.44-fc-v1045``: patch releases change often on
    hosted runners and would cut a history into short pieces."""
    if not isinstance(version, str) or not version:
        return None
    parts = version.split("-")[0].split(".")
    return ".".join(parts[:2])


def machine_facts(machine: dict[str, Any]) -> dict[str, Any]:
    """The facts of a summary's ``machine`` that make up its fingerprint."""
    return {
        "cpu_model": machine.get("cpu_model"),
        "available_parallelism": machine.get("available_parallelism"),
        "cpu_count": machine.get("cpu_count"),
        "python": _major_minor(machine.get("python")),
        "kernel": _major_minor(machine.get("kernel")),
    }


def fingerprint(machine: dict[str, Any]) -> str:
    """A short stable id of :func:`machine_facts` (12 hex digits)."""
    return _digest(machine_facts(machine))


def scenario_key(scenario: dict[str, Any]) -> str:
    """``NAME@digest``: the scenario's name and a digest of its measuring fields, its target's
    kind and its workloads' names."""
    target = scenario.get("target") or {}
    measured = {
        **{k: scenario.get(k) for k in SCENARIO_FIELDS},
        "target_kind": target.get("kind"),
        "workloads": sorted(scenario.get("workloads") or {}),
    }
    return f"{scenario.get('name')}@{_digest(measured)}"
