"""`clusterlab report` on two recorded runs gives exactly the summary.json, report.md and tables
kept in expected/: the report is a pure function of the raw tables.

expected/ was first written by the lab before its restructuring (the restructured lab reproduced
it); it was rewritten, and the difference read line by line, when the verdicts and the
recovery's fault-free level were added (summary schema 3). Any other change to it is a change in
what the lab reports for the same measurements, to be made on purpose.

Inputs (tests/lab/data/golden/NAME): a run's raw tables and meta.json, as `clusterlab run` wrote
them: a sweep (3 worker counts × rr/none × 2 repeats, with a gate) and a crash run (SIGKILL every
2 s, backoff respawn). Markdown tables are compared cell by cell (column padding may differ);
every other line of report.md exactly; summary.json as data.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.parallel_ok  # starts no load: runs beside the cluster tests

GOLDEN = Path(__file__).parent / "data" / "golden"
TABLES = ("results.csv", "workers.csv", "timeseries.csv", "events.csv", "failures.csv")


def _report(name: str, tmp_path: Path) -> Path:
    run = tmp_path / name
    run.mkdir()
    for file in (*TABLES, "meta.json"):
        shutil.copy(GOLDEN / name / file, run / file)
    done = subprocess.run(
        [sys.executable, "-m", "clusterlab.cli", "report", str(run)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return run


def _blocks(markdown: str) -> list[object]:
    """report.md as a list of lines, each table row turned into its list of cells (separator
    rows dropped), so that only column padding is free."""
    out: list[object] = []
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if all(re.fullmatch(r":?-+:?", c) for c in cells):
                continue
            out.append(cells)
        else:
            out.append(line)
    return out


@pytest.mark.parametrize("name", ["sweep", "crash"])
def test_report_from_recorded_run_matches_what_it_gave_before(name: str, tmp_path: Path) -> None:
    run = _report(name, tmp_path)
    expected = GOLDEN / name / "expected"
    assert json.loads((run / "summary.json").read_text()) == json.loads(
        (expected / "summary.json").read_text()
    )
    assert _blocks((run / "report.md").read_text()) == _blocks((expected / "report.md").read_text())
    for table in TABLES:  # the report reads the tables and never writes them back
        assert (run / table).read_bytes() == (GOLDEN / name / table).read_bytes(), table


def test_golden_runs_cover_the_report_sections() -> None:
    """The recorded runs exercise what the report can say: several verdicts, conclusions,
    gates, recovery against the fault-free level (recovered and never back)."""
    sweep = json.loads((GOLDEN / "sweep" / "expected" / "summary.json").read_text())
    crash = json.loads((GOLDEN / "crash" / "expected" / "summary.json").read_text())
    assert {p["verdict"] for p in sweep["points"]} >= {"target", "machine"}
    assert sweep["scenario"]["gates"]
    assert "## Conclusions" in (GOLDEN / "sweep" / "expected" / "report.md").read_text()
    recoveries = {f["recovery"] for f in crash["recovery"]["faults"]}
    assert recoveries == {"back", "never back within the run"}


def test_the_html_report_opens_with_a_table_of_contents(tmp_path: Path) -> None:
    html = (_report("crash", tmp_path) / "report.html").read_text()
    nav = html[html.index("<nav>") : html.index("</nav>")]
    for section in ("Summary", "Recovery", "Every fault", "What limited each point", "Plots"):
        anchor = nav.split(f">{section}</a>")[0].rsplit('href="#', 1)[1].rstrip('"')
        assert f'<h2 id="{anchor}">{section}</h2>' in html
    assert html.count('src="data:image/png;base64,') >= 4  # self-contained: plots embedded
