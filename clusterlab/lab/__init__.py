"""The lab: scenario → plan → run (target + locust + sampling) → raw tables → analysis →
plots and reports → gates and comparisons. ``load_results`` reads a finished run's tables into
pandas in one call; ``analyze`` adds everything derived from them."""

from clusterlab.lab.analysis.analysis import Analysis, analyze
from clusterlab.lab.analysis.tables import Results, load_results
from clusterlab.lab.config.scenario import Scenario, ScenarioError, load_scenario

__all__ = [
    "Analysis",
    "Results",
    "Scenario",
    "ScenarioError",
    "analyze",
    "load_results",
    "load_scenario",
]
