"""The lab: scenario → plan → run (target + locust + sampling) → tidy tables → metrics → plots →
report. ``load_results`` reads a finished run into pandas in one call."""

from clusterlab.lab.analysis.tables import Results, load_results
from clusterlab.lab.config.scenario import Scenario, ScenarioError, load_scenario

__all__ = ["Results", "Scenario", "ScenarioError", "load_results", "load_scenario"]
