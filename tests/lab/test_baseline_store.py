"""Named baselines keep the run and its machine facts; compare accepts a baseline's name."""

import json

import pytest
from compare_fixtures import summary

from clusterlab.cli import main

pytestmark = pytest.mark.parallel_ok  # starts no load: runs beside the cluster tests

RPS = {("cpu", "rr", 1): [500, 510, 490, 505, 495]}


def test_save_show_and_compare_by_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLUSTERLAB_BASELINES", str(tmp_path / "store"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text(json.dumps(summary(RPS, cpu_model="Box 9")))
    assert main(["baseline", "save", "main", "run"]) == 0
    saved = json.loads((tmp_path / "store" / "main" / "baseline.json").read_text())
    assert saved["machine"]["cpu_model"] == "Box 9" and saved["name"] == "main"
    capsys.readouterr()
    assert main(["baseline", "show", "main"]) == 0
    shown = capsys.readouterr().out
    assert "baseline main" in shown and "Box 9" in shown and "cpu" in shown
    assert main(["compare", "main", "run"]) == 0
    assert main(["baseline", "save", "main", "run"]) == 0  # replacing is fine
