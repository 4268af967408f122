"""The history store and fingerprints: recorded runs in, one pandas call out; series never mixed;
figures that travel between machines; untrusted runs marked; bad files refused and left as they
were."""

import copy
import json
import sqlite3
import statistics

import pandas as pd
import pytest
from history_fixtures import recorded, scaled

from clusterlab.lab.ci import fingerprint, history

pytestmark = pytest.mark.parallel_ok  # starts no load: runs beside the cluster tests


def add(db, summary, source="run"):
    return history.add(db, history.record(summary, source))


def test_runs_are_read_back_with_one_pandas_call(tmp_path):
    db = tmp_path / "h.sqlite"
    base = recorded("a1")
    for n in range(3):
        add(db, scaled(base, n, 1 + n / 10))

    data = pd.read_sql_query("SELECT * FROM series", sqlite3.connect(db))

    assert list(data["run"].drop_duplicates()) == [1, 2, 3]
    rps = data[data["metric"] == "rps"]
    want = [statistics.median(p["rps"] for p in base["points"]) * (1 + n / 10) for n in range(3)]
    assert list(rps["value"]) == pytest.approx(want)
    assert list(rps["revision"]) == ["c000", "c001", "c002"]
    assert set(data["group"]) == {"cpu/rr/1"}
    assert set(data["scenario"]) == {"trust"}
    assert {"rps", "rps_per_cpu", "p99_ms", "fairness.jain", "failure_ratio"} <= set(data["metric"])
    assert data["trusted"].all()
    assert history.read(db).equals(data)


def test_throughput_per_cpu_second_cancels_a_cpu_burner_that_lowers_throughput():
    """Recorded: the same run quiet and beside a CPU burner (workers got ~80 % of a core)."""
    quiet, busy = (
        {r["metric"]: r for r in history.figures(recorded(name))} for name in ("a1", "burner-1")
    )

    assert busy["rps"]["value"] / quiet["rps"]["value"] < 0.85
    assert busy["rps_per_cpu"]["value"] / quiet["rps_per_cpu"]["value"] == pytest.approx(
        1, abs=0.05
    )
    assert busy["rps_per_cpu"]["travels"] and not busy["rps"]["travels"]


def test_a_run_beside_a_cpu_burner_is_kept_but_untrusted_with_its_reasons(tmp_path):
    db = tmp_path / "h.sqlite"
    add(db, recorded("burner-1"))

    data = history.read(db)

    assert not data["trusted"].any()
    assert data["distrust"].str.contains("outside CPU").all()
    with sqlite3.connect(db) as con:
        trusted, why = con.execute("SELECT trusted, distrust FROM runs").fetchone()
    assert trusted == 0 and "not target-bound" in why


def test_adding_the_same_run_twice_keeps_one(tmp_path):
    db = tmp_path / "h.sqlite"
    summary = recorded("a1")

    assert add(db, summary) == (1, True)
    assert add(db, summary) == (1, False)
    assert history.read(db)["run"].nunique() == 1


def test_machine_fingerprint_ignores_patch_releases_and_separates_cpus_and_cores():
    machine = recorded("a1")["machine"]
    patched = {**machine, "python": "3.11.9", "kernel": "6.18.50-other", "load_average": [9]}

    assert fingerprint.fingerprint(patched) == fingerprint.fingerprint(machine)
    assert fingerprint.machine_facts(machine) == {
        "cpu_model": "AMD EPYC",
        "available_parallelism": 2,
        "cpu_count": 2,
        "python": "3.11",
        "kernel": "6.18",
    }
    for change in ({"cpu_model": "Intel Xeon"}, {"available_parallelism": 4}, {"python": "3.12.1"}):
        assert fingerprint.fingerprint({**machine, **change}) != fingerprint.fingerprint(machine)


def test_scenario_key_follows_how_a_run_measures_not_the_code_it_measures():
    scenario = recorded("a1")["scenario"]
    slower = copy.deepcopy(scenario)
    slower["workloads"] = {"cpu": {"/cpu?ms=2.3": 1.0}}
    slower["path"] = "/elsewhere/trust.toml"
    longer = copy.deepcopy(scenario)
    longer["load"]["duration"] = 3.0
    other = copy.deepcopy(scenario)
    other["workloads"] = {"hello": {"/hello": 1.0}}

    key = fingerprint.scenario_key(scenario)
    assert key.startswith("trust@")
    assert fingerprint.scenario_key(slower) == key
    assert fingerprint.scenario_key(longer) != key
    assert fingerprint.scenario_key(other) != key


def test_runs_of_other_scenarios_or_machines_are_never_mixed(tmp_path):
    db = tmp_path / "h.sqlite"
    base = recorded("a1")
    other_machine = scaled(base, 1, 1.0)
    other_machine["machine"]["cpu_model"] = "Other CPU"
    other_scenario = scaled(base, 2, 1.0)
    other_scenario["scenario"]["name"] = "nightly"
    for summary in (base, other_machine, other_scenario, scaled(base, 3, 1.0)):
        add(db, summary)

    listed = history.series_list(db)

    assert len(listed) == 3
    ours = listed[(listed["scenario"] == "trust") & (listed["runs"] == 2)].iloc[0]
    data = history.load_series(db, ours["scenario_key"], ours["fingerprint"])
    assert list(data["run"].drop_duplicates()) == [1, 4]
    assert list(
        history.load_series(db, ours["scenario_key"], ours["fingerprint"], last=1)[
            "run"
        ].drop_duplicates()
    ) == [4]


def test_a_missing_history_is_refused_for_reading(tmp_path):
    with pytest.raises(history.HistoryError, match="no such file"):
        history.read(tmp_path / "none.sqlite")
    assert not (tmp_path / "none.sqlite").exists()


@pytest.mark.parametrize("kind", ["garbage", "foreign sqlite"])
def test_a_file_that_is_not_a_history_is_refused_and_left_as_it_was(tmp_path, kind):
    db = tmp_path / "h.sqlite"
    if kind == "garbage":
        db.write_bytes(b"not a database at all\n" * 100)
    else:
        with sqlite3.connect(db) as con:
            con.execute("CREATE TABLE notes (text TEXT)")
            con.execute("INSERT INTO notes VALUES ('mine')")
        con.close()
    before = db.read_bytes()

    with pytest.raises(history.HistoryError, match="expected a clusterlab history"):
        add(db, recorded("a1"))
    with pytest.raises(history.HistoryError, match="expected a clusterlab history"):
        history.read(db)
    assert db.read_bytes() == before


def test_a_failed_add_leaves_the_history_as_it_was(tmp_path):
    db = tmp_path / "h.sqlite"
    add(db, recorded("a1"))
    rec = history.record(scaled(recorded("a1"), 1, 1.0))
    rec.figures.append({**rec.figures[0], "no_such_column": 1})

    with pytest.raises(history.HistoryError, match="nothing changed"):
        history.add(db, rec)

    assert history.read(db)["run"].unique().tolist() == [1]


def test_the_full_summary_is_kept_with_each_run(tmp_path):
    db = tmp_path / "h.sqlite"
    summary = recorded("plus30-1")
    add(db, summary)

    with sqlite3.connect(db) as con:
        (text,) = con.execute("SELECT summary FROM runs").fetchone()

    assert json.loads(text) == summary


def test_a_partial_run_and_a_failed_point_make_the_run_untrusted(tmp_path):
    partial = scaled(recorded("a1"), 1, 1.0)
    partial["run"]["partial"] = True
    failed = scaled(recorded("a1"), 2, 1.0)
    failed["points"][0]["status"] = "failed"
    failed["points"][0]["error"] = "target exited"

    cut, broken = history.record(partial), history.record(failed)

    assert cut.run["trusted"] == 0 and cut.run["distrust"] == "partial run"
    assert not any(f["trusted"] for f in cut.figures)
    assert broken.run["trusted"] == 0 and "point failed: target exited" in broken.run["distrust"]
    quiet = history.record(recorded("a1")).run
    assert (quiet["trusted"], quiet["distrust"]) == (1, "")
