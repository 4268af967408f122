"""CI: gates on one run, comparison of two runs, named baselines, CI outputs (terminal,
Markdown, JUnit XML, JSON) and the pytest plugin."""
