"""The lab's target takes faults over its control channel: it picks the worker (busiest, by slot,
by id), signals it or arms the fault in it, and reports every fault, exit and replacement as an
event; real processes, real sockets, no load generator."""

import http.client
import json

import pytest
from target_events import wait_for

from clusterlab.lab.config.scenario import Respawn, Target
from clusterlab.lab.running.processes import free_port
from clusterlab.lab.running.targets import ClusterTarget, TargetConfig, start_target


def fault(target: ClusterTarget, n: int, kind: str, where: str, **options) -> dict:
    command = {"cmd": "fault", "id": n, "stream": 0, "kind": kind, "target": where, "draw": 0.0}
    target.inject({**command, "code": 1, "hang": "sigstop", "fatal": False, **options})
    return wait_for(target, lambda e: e["event"] in ("fault", "fault_skipped") and e["id"] == n)


def replaced(target: ClusterTarget, gone: dict) -> dict:
    """The exit of the fault's worker, then a new worker listening in its slot."""
    exit_ = wait_for(target, lambda e: e["event"] == "exit" and e["worker"] == gone["worker"])
    wait_for(
        target,
        lambda e: (
            e["event"] == "listening"
            and e["slot"] == gone["slot"]
            and e["worker"] != gone["worker"]
            and e["t"] > exit_["t"]
        ),
    )
    return exit_


def get(url: str, conn: http.client.HTTPConnection | None = None) -> str:
    conn = conn or http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    conn.request("GET", "/hello")
    response = conn.getresponse()
    response.read()
    return str(response.getheader("X-Worker-Id"))


@pytest.fixture
def target(tmp_path):
    config = TargetConfig(
        Target(kind="builtin"),
        workers=3,
        policy="rr",
        log_path=tmp_path / "target.log",
        respawn=Respawn(policy="immediate", max_restarts=20, within=60),
        port=free_port(),
    )
    handle = start_target(config)
    assert isinstance(handle, ClusterTarget)
    yield handle
    handle.stop()


def test_the_busiest_worker_is_the_one_that_served_most_in_the_last_second(target):
    conn = http.client.HTTPConnection(target.url.removeprefix("http://"), timeout=10)
    served = {get(target.url, conn) for _ in range(100)}  # one keep-alive connection: one worker
    conn.close()
    # the primary has the worker's count of those 100 requests (its reports come every 0.1 s)
    wait_for(
        target,
        lambda e: e["event"] == "counts" and str(e["worker"]) in served and e["requests"] >= 100,
    )
    done = fault(target, 0, "sigkill", "busiest")
    assert done["event"] == "fault" and served == {str(done["worker"])}
    assert done["how"] == "SIGKILL"
    exit_ = replaced(target, done)
    assert (exit_["kind"], exit_["signal"], exit_["boot"]) == ("crash", "SIGKILL", False)


def test_faults_by_slot_and_by_id_and_their_exits(target):
    term = fault(target, 0, "sigterm", "slot:1")
    assert term["slot"] == 1 and term["how"] == "SIGTERM"
    assert replaced(target, term)["signal"] == "SIGTERM"
    pids = {e["worker"]: e for e in target.events() if e["event"] == "fork"}
    exit7 = fault(target, 1, "exit", f"worker:{min(pids)}", code=7)
    assert (exit7["worker"], exit7["how"]) == (min(pids), "exit 7")
    gone = replaced(target, exit7)
    assert (gone["code"], gone["kind"]) == (7, "crash")
    missing = fault(target, 2, "sigkill", "worker:999")
    assert missing["event"] == "fault_skipped" and "no ready worker 999" in missing["reason"]
    restarts = [e for e in target.events() if e["event"] == "restart_scheduled"]
    assert [e["slot"] for e in restarts] == [1, exit7["slot"]]


def test_an_armed_exception_fires_at_the_next_request(target):
    armed = fault(target, 0, "exception", "slot:0")
    assert armed["how"] == "armed"
    answers = []
    for _ in range(12):  # round-robin: the armed worker gets one of every three connections
        try:
            answers.append(get(target.url))
        except http.client.HTTPException:
            answers.append("failed")
    fired = wait_for(target, lambda e: e["event"] == "fault_fired" and e["id"] == 0)
    assert fired["worker"] == armed["worker"] and fired["t"] >= armed["t"]
    assert "failed" not in answers  # a 500 is an answer: the worker serves on
    assert not [e for e in target.events() if e["event"] == "exit"]


def test_a_fatal_exception_kills_its_worker_mid_request(target):
    armed = fault(target, 0, "exception", "slot:2", fatal=True)
    failed = 0
    for _ in range(12):
        try:
            get(target.url)
        except (http.client.HTTPException, ConnectionError):
            failed += 1
    wait_for(target, lambda e: e["event"] == "fault_fired" and e["id"] == 0)
    exit_ = replaced(target, armed)
    assert (exit_["code"], exit_["kind"]) == (1, "crash") and failed == 1
    assert "InjectedFault: lab fault 0" in (target.config.log_path.read_text())


def test_supervision_reports_round_robin_handoffs_and_restarts(target):
    before = target.supervision()
    for _ in range(6):
        get(target.url)
    after = target.supervision()
    assert after["rr"]["accepted"] - before["rr"]["accepted"] == 6
    assert after["rr"]["dropped"] == 0 and after["stats"]["spawns"] == 3
    assert json.dumps(after)  # plain data
