"""The lab: scenario → plan → run (target + locust + sampling) → raw tables → analysis →
plots and reports → gates and comparisons. ``load_results`` reads a finished run's tables into
pandas in one call; ``analyze`` adds everything derived from them.

The names below are imported on first use: the processes the lab starts (the target's workers,
locust) and the pytest plugin import parts of this package and must not pay for pandas.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clusterlab.lab.analysis.analysis import Analysis, analyze
    from clusterlab.lab.analysis.tables import Results, load_results
    from clusterlab.lab.config.scenario import Scenario, ScenarioError, load_scenario

_WHERE = {
    "Analysis": "clusterlab.lab.analysis.analysis",
    "analyze": "clusterlab.lab.analysis.analysis",
    "Results": "clusterlab.lab.analysis.tables",
    "load_results": "clusterlab.lab.analysis.tables",
    "Scenario": "clusterlab.lab.config.scenario",
    "ScenarioError": "clusterlab.lab.config.scenario",
    "load_scenario": "clusterlab.lab.config.scenario",
}

__all__ = [
    "Analysis",
    "Results",
    "Scenario",
    "ScenarioError",
    "analyze",
    "load_results",
    "load_scenario",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'clusterlab.lab' has no attribute {name!r}")
    return getattr(import_module(_WHERE[name]), name)
