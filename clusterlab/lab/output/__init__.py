"""Output: plots, report.md and report.html, rendered from one ``Analysis``."""
