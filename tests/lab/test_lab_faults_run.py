"""Crash runs through the CLI, real cluster and real locust: every SIGKILL is followed by a
replacement listening, round-robin loses no queued connection, the recovery metrics are there
and sane, the timeline and the recovery table are drawn; a hang is caught by the heartbeat and
the restart limit refuses what comes after it."""

import json
import struct
from importlib import resources

import jsonschema
import pandas as pd
import pytest
from test_lab_run_end_to_end import assert_all_stopped, clusterlab

from clusterlab.lab import load_results

CRASHY = """
name = "crashy"
[target]
kind = "builtin"
start_method = "forkserver"   # replacements forked from the template: exit statuses via it
[sweep]
workers = [2]
policies = ["rr"]
[workloads]
io = { "/io?ms=20" = 1 }
[load]
users = 8
warmup = 1
duration = 7
connection = "new"
[[faults]]
kind = "sigkill"
every = 1.5
stop = 5
[[faults]]
kind = "exception"
start = 2.2
stop = 2.3
every = 1
[respawn]
policy = "backoff"
base = 0.05
cap = 0.2
max_restarts = 20
within = 60
"""
LIMITED = """
name = "limited"
[target]
kind = "builtin"
[sweep]
workers = [2]
policies = ["none"]
[workloads]
io = { "/io?ms=20" = 1 }
[load]
users = 8
warmup = 1
duration = 6
[[faults]]
kind = "hang"
hang = "handler"
target = "busiest"            # under none with keep-alive, a worker may get no request at all
start = 1
stop = 1.2
every = 1
[[faults]]
kind = "sigkill"
start = 3.5
stop = 5
every = 1
[respawn]
policy = "immediate"
max_restarts = 1
within = 60
heartbeat = { interval = 0.2, timeout = 1 }
"""


# Round-robin under SIGKILLs, with the workers counting what they hold: a `script` target whose
# single-threaded workers serve one request at a time (20 ms), so each also has connections
# handed to it and not yet taken when it is killed: the primary must read those back and hand
# them on. Each worker counts the connections it holds (up before accept(), down after close)
# in a file-backed page, inflight/<pid>, which still says after its SIGKILL what it held.
RR_CRASHY = """
name = "rr_crashy"
[target]
kind = "script"
script = "{script}"
[sweep]
workers = [2]
policies = ["rr"]
[workloads]
io = {{ "/?ms=20" = 1 }}
[load]
users = 8
warmup = 1
duration = 5
connection = "new"
[[faults]]
kind = "sigkill"
every = 1.5
stop = 5
[respawn]
policy = "backoff"
base = 0.05
cap = 0.2
max_restarts = 20
within = 60
"""
HELD_WORKER = """
import mmap, os, struct, time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from clusterlab import cluster
from clusterlab.servers import HTTPServer


class Held:
    def __init__(self, path):
        path.write_bytes(bytes(8))
        fd = os.open(path, os.O_RDWR)
        self.page = mmap.mmap(fd, 8)
        os.close(fd)
        self.n = 0

    def add(self, n):
        self.n += n
        struct.pack_into("q", self.page, 0, self.n)


HELD = Held(Path(__file__).with_name("inflight") / str(os.getpid()))


class Server(HTTPServer):
    def get_request(self):
        HELD.add(1)
        try:
            return super().get_request()
        except BaseException:
            HELD.add(-1)
            raise

    def shutdown_request(self, request):
        try:
            super().shutdown_request(request)
        finally:
            HELD.add(-1)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        time.sleep(float(parse_qs(urlsplit(self.path).query).get("ms", ["0"])[0]) / 1000)
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.send_header("X-Worker-Id", str(cluster.worker.id))
        self.end_headers()
        self.wfile.write(b"ok\\n")

    def log_message(self, *args):
        pass


Server(("127.0.0.1", int(os.environ["CLUSTERLAB_LAB_PORT"])), Handler).serve_forever(0.05)
"""


def write(root, name, text):
    (root / f"{name}.toml").write_text(text)
    return root / f"{name}.toml"


def run(tmp_path_factory, name, text):
    root = tmp_path_factory.mktemp(name)
    done = clusterlab("run", write(root, name, text), "--out", root / "out")
    return done, root / "out"


@pytest.fixture(scope="module")
def crashy(tmp_path_factory):
    return run(tmp_path_factory, "crashy", CRASHY)


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    return run(tmp_path_factory, "limited", LIMITED)


@pytest.fixture(scope="module")
def rr_crashy(tmp_path_factory):
    root = tmp_path_factory.mktemp("rr_crashy")
    (root / "inflight").mkdir()
    script = root / "held_worker.py"
    script.write_text(HELD_WORKER)
    done = clusterlab(
        "run", write(root, "rr_crashy", RR_CRASHY.format(script=script)), "--out", root / "out"
    )
    return done, root / "out", root / "inflight"


def by(events: pd.DataFrame, name: str) -> pd.DataFrame:
    return events[events["event"] == name].sort_values("t")


def test_a_crash_run_succeeds_and_draws_the_timeline_and_the_recovery_table(crashy):
    done, out = crashy
    assert done.returncode == 0, done.stderr
    assert (out / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "## Recovery" in report and "## Every fault" in report
    assert "![timeline.png](timeline.png)" in report
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 5
    summary = json.loads((out / "summary.json").read_text())
    schema = json.loads(
        resources.files("clusterlab.lab.analysis").joinpath("summary.schema.json").read_text()
    )
    jsonschema.validate(summary, schema)
    assert summary["schema_version"] == 3 and summary["plots"]["timeline"] == "timeline.png"
    assert len(summary["recovery"]["points"]) == 1 and len(summary["recovery"]["faults"]) == 4


def test_every_sigkill_is_followed_by_a_replacement_listening_in_its_slot(crashy):
    _, out = crashy
    events = load_results(out).events
    kills = by(events, "fault")
    kills = kills[kills["kind"] == "sigkill"]
    assert kills["t"].tolist() == pytest.approx([1.5, 3.0, 4.5], abs=0.3)
    for kill in kills.to_dict("records"):
        exit_ = by(events, "exit")
        exit_ = exit_[(exit_["worker"] == kill["worker"]) & (exit_["t"] >= kill["t"])].iloc[0]
        assert (exit_["kind"], exit_["signal"]) == ("crash", "SIGKILL")
        after = by(events, "listening")
        after = after[(after["slot"] == kill["slot"]) & (after["t"] > exit_["t"])]
        assert not after.empty and after.iloc[0]["worker"] != kill["worker"]
    assert len(by(events, "restart_scheduled")) == 3
    assert by(events, "fault_fired")["kind"].tolist() == ["exception"]


def test_round_robin_loses_no_queued_connection(rr_crashy):
    done, out, inflight = rr_crashy
    assert done.returncode == 0, done.stderr
    data = load_results(out)
    row = data.results.iloc[0]
    # The killed workers held connections handed to them and not yet taken: the primary read
    # them back (its own counter)...
    assert row["rr_requeued"] > 0 and row["rr_dropped"] == 0, row
    assert row["rr_accepted"] >= row["requests"]  # one connection per request, each accepted
    # ...and the clients' view says they were handed on, not lost: the requests that failed
    # after each SIGKILL (until the next) are at most the connections the killed worker itself
    # held, by its own count at its death.
    kills = by(data.events, "fault")
    kills = kills[kills["kind"] == "sigkill"]
    assert len(kills) == 3, kills
    held = {
        pid: struct.unpack("q", (inflight / str(int(pid))).read_bytes()[:8])[0]
        for pid in kills["pid"]
    }
    fails = data.timeseries[
        (data.timeseries["source"] == "locust") & (data.timeseries["series"] == "fail_100ms")
    ]
    times = kills["t"].tolist() + [float("inf")]
    # a bin counts the failures that ended in the 100 ms before its time
    assert fails[fails["t"] <= times[0]]["value"].sum() == 0, "failures before the first kill"
    for i, kill in enumerate(kills.to_dict("records")):
        cut = fails[(fails["t"] > kill["t"]) & (fails["t"] <= times[i + 1])]["value"].sum()
        assert cut <= held[kill["pid"]], (
            f"kill {i} at {kill['t']:.2f} s: {cut:g} requests failed, the worker held "
            f"{held[kill['pid']]}; rr {row[['rr_accepted', 'rr_requeued', 'rr_dropped']].to_dict()}"
        )
    assert fails["value"].sum() == row["failures"]  # every failure is in some window


def test_every_process_of_the_rr_crash_run_is_gone(rr_crashy):
    assert_all_stopped(rr_crashy[1])


def test_recovery_metrics_are_present_and_sane(crashy):
    _, out = crashy
    summary = json.loads((out / "summary.json").read_text())
    (point,) = summary["recovery"]["points"]
    assert point["faults"] == 4 and point["took_effect"] == 4 and point["skipped"] == 0
    assert point["crashes"] == 3 and point["replaced"] == 3
    assert 0 < point["to_listening_median_s"] <= point["to_listening_max_s"] < 15
    assert point["rr_dropped"] == 0 and point["refused"] == 0 and not point["limit_reached"]
    assert point["fail_5xx"] >= 1  # the armed exception's 500
    faults = summary["recovery"]["faults"]
    for fault in faults:
        assert fault["pre_rps"] > 0
        assert fault["to_recover_s"] is None or 0 <= fault["to_recover_s"] < 7
    # What each fault cost, from the scenario: the armed exception fails the one request it
    # fires on, with a 500; a SIGKILL cuts at most the requests in flight (one per user, 8),
    # as connection errors, never as answers.
    costs = [(f["kind"], f["failures"], f["fail_5xx"]) for f in faults]
    assert [c for c in costs if c[0] == "exception"] == [("exception", 1, 1)], costs
    assert all(n <= 8 and fail_5xx == 0 for kind, n, fail_5xx in costs if kind == "sigkill"), costs
    results = load_results(out).results.iloc[0]
    assert sum(f["failures"] for f in faults) <= results["failures"]
    timeseries = load_results(out).timeseries
    ok = timeseries[timeseries["series"] == "ok_100ms"]
    assert ok["value"].sum() >= results["requests"] - results["failures"]


def test_the_recovery_table_is_rebuilt_from_the_tables(crashy, tmp_path):
    import shutil

    _, out = crashy
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for name in ("summary.json", "report.md", "timeline.png"):
        (copy / name).unlink()
    shutil.rmtree(copy / "raw")
    done = clusterlab("report", copy)
    assert done.returncode == 0, done.stderr
    assert (copy / "timeline.png").exists()
    rebuilt = json.loads((copy / "summary.json").read_text())
    assert rebuilt["recovery"] == json.loads((out / "summary.json").read_text())["recovery"]


def test_every_process_of_the_crash_run_is_gone(crashy):
    assert_all_stopped(crashy[1])


def test_a_hang_is_caught_and_the_restart_limit_refuses_later_restarts(limited):
    done, out = limited
    assert done.returncode == 0, done.stderr
    events = load_results(out).events
    hang = by(events, "fault_fired").iloc[0]
    detected = by(events, "hang_detected").iloc[0]
    # silence counts from the last beat (at most one interval before the hang)
    assert detected["worker"] == hang["worker"] and 0.7 < detected["t"] - hang["t"] < 5
    assert hang["t"] < 1.5
    exits = by(events, "exit")
    assert exits[exits["worker"] == hang["worker"]].iloc[0]["kind"] == "hang"
    assert len(by(events, "restart_scheduled")) == 1  # the hung worker's replacement
    assert len(by(events, "restart_limit")) == 1
    assert len(by(events, "restart_refused")) == 2  # both SIGKILLs after the limit
    summary = json.loads((out / "summary.json").read_text())
    (point,) = summary["recovery"]["points"]
    assert (point["hangs_detected"], point["refused"], point["limit_reached"]) == (1, 2, True)
    assert point["replaced"] == 1 and point["crashes"] == 3
    assert " limit" in (out / "report.md").read_text()
    assert_all_stopped(out)
