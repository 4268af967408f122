"""Configuration: a scenario file read and checked, turned into the plan of points, and the gate
conditions it states. Everything downstream reads these frozen objects."""
