"""Real locust, in its own processes, against a real stdlib server that counts for itself."""

import json

import pytest

from clusterlab.lab.config.scenario import Load, Workload
from clusterlab.lab.protocol import LoadFile
from clusterlab.lab.running.load import LoadError, read_load, start_load, stop_load, wait_load

HELLO = Workload("hello", (("/hello", 1.0),))


def _run(server, tmp_path, processes=1, **load):
    spec = Load(**{"users": 4, "warmup": 0.5, "duration": 1.5, **load})
    before = server.counts()
    run = start_load(spec, HELLO, server.url, processes, tmp_path, "X-Worker-Id")
    try:
        wait_load(run)
    finally:
        stop_load(run)
    assert all(p.poll() is not None for p in run.processes)
    after = server.counts()
    # The /count request after the load opened one connection of its own.
    served = {
        "requests": after["requests"] - before["requests"],
        "connections": after["connections"] - before["connections"] - 1,
    }
    return read_load(tmp_path), served


def test_keep_alive_load_measures_only_the_window_and_tallies_the_worker_header(
    counting_server, tmp_path
):
    outcome, served = _run(counting_server, tmp_path)
    assert outcome.window_s == pytest.approx(1.5, abs=0.2)
    requests = outcome.stats["requests"]
    assert requests > 100 and outcome.stats["failures"] == 0
    assert outcome.tally == {"w-test": requests}
    # The server also saw the warm-up, which locust's results leave out.
    assert requests < served["requests"]
    assert served["connections"] == 4
    assert outcome.stats["p50_ms"] <= outcome.stats["p99_ms"] <= outcome.stats["max_ms"]


def test_new_connection_per_request_opens_one_connection_per_request(counting_server, tmp_path):
    outcome, served = _run(counting_server, tmp_path, connection="new", users=2)
    assert outcome.stats["requests"] > 50
    # Up to one request per user can be cut off when the users are stopped.
    assert served["requests"] - 2 <= served["connections"] <= served["requests"]


def test_master_worker_mode_merges_every_locust_worker(counting_server, tmp_path):
    outcome, served = _run(counting_server, tmp_path, processes=2)
    # the workers' tallies came to the master in its messages: one file, the master's
    assert len(list(tmp_path.glob("tally-*.json"))) == 1
    assert outcome.tally == {"w-test": outcome.stats["requests"]}
    assert 0 < outcome.stats["requests"] < served["requests"]
    workers = outcome.load_workers
    assert len(workers) == 2 and all(w["working"] and not w["lost"] for w in workers)
    assert all(w["cpu_pct"] > 0 for w in workers) and outcome.lost == []


def test_open_model_holds_the_arrival_rate(counting_server, tmp_path):
    outcome, _ = _run(counting_server, tmp_path, model="open", rate=200.0)
    assert outcome.stats["requests"] / outcome.window_s == pytest.approx(200.0, rel=0.15)


def test_open_model_arrivals_come_evenly_however_slow_each_user(counting_server, tmp_path):
    # 400 users at 0.25 req/s each: every user sends at most once in a 100 ms bin. With the
    # users' phases drawn at random a bin's count would scatter like Poisson(10) (within 10 ± 2
    # in 58 % of bins); on an even grid each bin holds 10 ± 1.
    outcome, _ = _run(counting_server, tmp_path, users=400, model="open", rate=100.0, duration=2)
    bins = outcome.outcomes
    inside = bins[(bins["start"] >= outcome.measure_start) & (bins["end"] <= outcome.measure_end)]
    counts = inside.groupby("bin")["count"].sum()
    assert len(counts) >= 15
    near = ((counts - 10).abs() <= 2).mean()
    assert near >= 0.8, counts.tolist()
    assert outcome.stats["arrivals"] == pytest.approx(100.0 * outcome.window_s, abs=6)


def test_load_refuses_anything_but_loopback(tmp_path):
    with pytest.raises(LoadError, match="loopback"):
        start_load(Load(users=1, duration=1), HELLO, "http://10.0.0.1:80", 1, tmp_path, None)


@pytest.mark.parametrize("processes", [1, 2])
def test_the_window_waits_until_every_user_has_started(counting_server, tmp_path, processes):
    # 4 users at 2 a second: the last cannot start before 4 / 2 - 1 = 1 s (locust starts a
    # second's users at once), well past the 0.3 s warm-up; a window from the warm-up's end
    # would measure the ramp
    outcome, _ = _run(counting_server, tmp_path, processes, spawn_rate=2, warmup=0.3, duration=0.5)
    marks = json.loads((tmp_path / LoadFile.PHASES).read_text())
    assert marks["spawned"] - marks["start"] >= 4 / 2 - 1 - 0.1
    assert outcome.measure_start >= marks["spawned"]
    assert outcome.window_s == pytest.approx(0.5, abs=0.2)
