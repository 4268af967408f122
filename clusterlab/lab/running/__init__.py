"""Running: for each point of the plan, start the target, load it, sample CPU and memory, inject
faults, and append what was observed to the run's raw tables."""
