"""Load from another machine, and a target on its own host, in network namespaces this module
creates: the target (`clusterlab serve --metrics`) in one, two locust workers (`clusterlab
loadgen`) in another, the lab and its locust master in the root namespace. One run of two
points serves every check: its outputs, per-worker counts equal to the target's own, a worker
killed mid-window marking its point, a worker without the token refused. Each namespace is on
a /30 of 198.18.0.0/15 with one veth pair to the root namespace, no default route, and
forwarding only between this module's two links; all are deleted afterwards."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from clusterlab.lab.config.scenario import Load, Remote, ScenarioError, Workload, load_scenario
from clusterlab.lab.running.load import LoadError, locustfile, start_load, stop_load, wait_load
from clusterlab.lab.running.processes import free_port

pytestmark = pytest.mark.timeout(120)
PID = os.getpid()
#: This module's /30 links: 198.18.X.Y from its pid (runs side by side do not collide).
_BASE = (PID % 8000) * 8
DURATION = 2.0


def _address(offset: int) -> str:
    n = _BASE + offset
    return f"198.18.{n // 256}.{n % 256}"


@dataclass(frozen=True)
class Net:
    target_ns: str
    load_ns: str
    target_ip: str  # the target's side of its link
    master_ip: str  # the root namespace's side of the load namespace's link


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _link(ns: str, veth: str, root: str, inside: str, other: str) -> None:
    """A veth pair from the root namespace into ``ns`` (root side ``root``/30, inside side
    ``inside``/30), a route inside to the ``other`` link only, and forwarding on the root side."""
    _ip("link", "add", f"{veth}a", "type", "veth", "peer", "name", f"{veth}b", "netns", ns)
    _ip("addr", "add", f"{root}/30", "dev", f"{veth}a")
    _ip("link", "set", f"{veth}a", "up")
    _ip("-n", ns, "addr", "add", f"{inside}/30", "dev", f"{veth}b")
    _ip("-n", ns, "link", "set", f"{veth}b", "up")
    _ip("-n", ns, "link", "set", "lo", "up")
    _ip("-n", ns, "route", "add", f"{other}/30", "via", root)
    Path(f"/proc/sys/net/ipv4/conf/{veth}a/forwarding").write_text("1")


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    names = [f"clt{PID}", f"cll{PID}"]
    created: list[str] = []
    try:
        for name in names:
            _ip("netns", "add", name)
            created.append(name)
    except (OSError, subprocess.CalledProcessError) as exc:
        for name in created:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        pytest.skip(f"ip netns is not permitted here: {exc}")
    try:
        _link(names[0], f"vt{PID}", _address(1), _address(2), _address(4))
        _link(names[1], f"vl{PID}", _address(5), _address(6), _address(0))
        yield Net(names[0], names[1], _address(2), _address(5))
    finally:
        for name in created:  # deleting a namespace deletes its veth pair too
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def _start(ns: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def _scrape(url: str) -> dict[str, int]:
    from clusterlab.lab.running.metrics_scrape import scrape

    return {w: int(c["requests"]) for w, c in scrape(url).workers.items()}


def _workers_cpu(metrics: str, primary_pid: int) -> tuple[float, float]:
    """The idle target's workers' CPU seconds: from its endpoint, and from psutil (the
    namespace shares this machine's processes)."""
    from clusterlab.lab.running.metrics_scrape import scrape

    endpoint = sum(v for (role, _), v in scrape(metrics).cpu_s.items() if role == "worker")
    seen = 0.0
    for child in psutil.Process(primary_pid).children():
        times = child.cpu_times()
        seen += times.user + times.system
    return endpoint, seen


def _kill_one_worker_mid_window(loadgen: subprocess.Popen[str], out: Path) -> dict[str, int]:
    """When the second point's window has run 0.5 s: SIGKILL one of the loadgen's workers."""
    killed: dict[str, int] = {}
    marker = out / "raw" / "point-001" / "measuring.json"
    deadline = time.monotonic() + 90
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    workers = psutil.Process(loadgen.pid).children()
    if workers:
        killed["pid"] = workers[0].pid
        workers[0].send_signal(signal.SIGKILL)
    return killed


@dataclass(frozen=True)
class Run:
    out: Path
    done: subprocess.CompletedProcess[str]
    before: dict[str, int]
    after: dict[str, int]
    killed: dict[str, int]
    rogue_exit: int | None
    #: after the run: the workers' CPU seconds as the endpoint says and as psutil sees them
    cpu_endpoint_s: float = 0.0
    cpu_psutil_s: float = 0.0


@pytest.fixture(scope="module")
def run(net: Net, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """The target, the loadgen (2 workers) and a worker with a wrong token; one lab run of two
    points at 100 req/s for 2 s each, a worker killed in the second."""
    folder = tmp_path_factory.mktemp("remote")
    (folder / "token").write_text("the-shared-token\n")
    port = free_port()
    url, metrics = f"http://{net.target_ip}:8000", f"http://{net.target_ip}:9464/metrics"
    (folder / "s.toml").write_text(
        f'[target]\nkind = "url"\nurl = "{url}"\nmetrics = "{metrics}"\n'
        '[sweep]\nworkers = [2]\nrepeats = 2\n[workloads]\nhello = { "/hello" = 1 }\n'
        f'[load]\nusers = 4\nmodel = "open"\nrate = 100\nwarmup = 0.5\nduration = {DURATION}\n'
        f'[network]\nallow = ["{net.target_ip}", "{net.master_ip}"]\n'
        f'[remote]\nworkers = 2\nbind = "{net.master_ip}:{port}"\ntoken_file = "token"\n'
        "wait = 20\n[report]\nplots = []\n"
    )
    serve = ["-m", "clusterlab", "serve", "--workers", "2", "--host", net.target_ip]
    target = _start(net.target_ns, serve + ["--port", "8000", "--metrics", metrics[7:-8]])
    master = f"{net.master_ip}:{port}"
    loadgen = _start(
        net.load_ns,
        ["-m", "clusterlab", "loadgen", "--master", master, "--token-file", str(folder / "token")]
        + ["--processes", "2"],
    )
    rogue = _start(
        net.load_ns,
        ["-m", "locust", "-f", str(locustfile()), "--worker", "--master-host", net.master_ip]
        + ["--master-port", str(port), "--loglevel", "WARNING"],
        env={"CLUSTERLAB_LAB_TOKEN": "not-the-token"},
    )
    try:
        assert target.stdout is not None
        for line in target.stdout:
            if re.match(r"serving http://", line):
                break
        before = _scrape(metrics)
        out = folder / "out"
        killed: dict[str, int] = {}
        killer = threading.Thread(
            target=lambda: killed.update(_kill_one_worker_mid_window(loadgen, out))
        )
        killer.start()
        done = subprocess.run(
            [sys.executable, "-m", "clusterlab", "run", str(folder / "s.toml"), "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=100,
        )
        killer.join()
        cpu = _workers_cpu(metrics, target.pid)
        yield Run(out, done, before, _scrape(metrics), killed, rogue.poll(), *cpu)
    finally:
        for proc in (rogue, loadgen, target):
            _stop(proc)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_a_run_with_remote_workers_and_a_remote_target_writes_every_output(run: Run):
    assert run.done.returncode == 0, run.done.stderr
    for name in ("results.csv", "workers.csv", "timeseries.csv", "events.csv", "summary.json"):
        assert (run.out / name).is_file(), name
    assert (run.out / "report.md").is_file() and (run.out / "report.html").is_file()
    first = _rows(run.out / "results.csv")[0]
    assert first["status"] == "ok" and first["counts_source"] == "metrics"
    assert first["processes"] == "2" and first["load_lost"] == ""
    assert float(first["rps"]) == pytest.approx(100, rel=0.15)
    # the load machine reported its own CPU, and the verdict's generator figure includes it
    assert float(first["remote_gen_cpu_max_pct"]) > 0
    assert float(first["gen_cpu_max_pct"]) >= float(first["remote_gen_cpu_max_pct"])


def test_a_remote_targets_cpu_comes_from_its_endpoint_and_feeds_the_verdict(run: Run):
    # the endpoint's figure is the workers' own CPU time, as the OS counts it
    assert run.cpu_endpoint_s > 0.1
    assert run.cpu_endpoint_s == pytest.approx(run.cpu_psutil_s, abs=0.05)
    first = _rows(run.out / "results.csv")[0]
    # the target's host's CPUs (the namespace is on this machine: the same CPUs)
    assert int(first["target_cpus"]) == len(os.sched_getaffinity(0))
    assert float(first["workers_cpu_pct"]) > 0 and float(first["primary_cpu_pct"]) >= 0
    rows = [r for r in _rows(run.out / "workers.csv") if r["point"] == "0"]
    assert all(float(r["cpu_s"]) > 0 for r in rows), rows
    # the verdict weighed the target's CPU ("target –" without a figure)
    point = json.loads((run.out / "summary.json").read_text())["points"][0]
    assert re.search(r"\btarget (used )?\d+% of", point["verdict_reason"]), point


def test_per_worker_counts_equal_the_targets_own_once_the_load_stopped(run: Run):
    rows = [r for r in _rows(run.out / "workers.csv") if r["point"] == "0"]
    assert len(rows) == 2
    for row in rows:
        # what the remote workers saw, by worker header, through locust's messages
        assert int(row["load_requests_seen"]) == int(row["load_requests_counted"]) > 50
        assert int(row["requests_seen_by_locust"]) <= int(row["load_requests_seen"])
    # the target's own counters over the whole run: both points' load, and nothing else
    total = sum(run.after[w] - run.before.get(w, 0) for w in run.after)
    assert total == sum(int(r["load_requests_counted"]) for r in _rows(run.out / "workers.csv"))


def test_a_remote_worker_killed_mid_window_marks_its_point(run: Run):
    assert run.killed, "no remote worker to kill"
    second = _rows(run.out / "results.csv")[1]
    assert second["load_workers_lost"] == "1"
    assert "process gone: killed by SIGKILL" in second["load_lost"]
    assert f"pid {run.killed['pid']}" in second["load_lost"]
    # and the run's progress says so on that point's line
    lines = [line for line in run.done.stderr.splitlines() if "LOAD WORKER LOST" in line]
    assert len(lines) == 1 and lines[0].startswith("point 2/2")
    # and the report names it, in both forms
    for report in ("report.md", "report.html"):
        text = (run.out / report).read_text()
        note = text.split("Load workers lost mid-window:")[1].split("Each such point")[0]
        assert "point 2: " in note[:20] and "point 1:" not in note
        assert "process gone: killed by SIGKILL" in note and f"pid {run.killed['pid']}" in note


def test_a_worker_without_the_token_is_refused_and_the_point_runs_without_it(run: Run):
    points = [
        json.loads((run.out / "raw" / f"point-00{i}" / "load-workers.json").read_text())
        for i in (0, 1)
    ]
    refused = [line for p in points for line in p["refused"]]
    assert len(refused) == 1 and "presented a wrong token" in refused[0]
    # each point started with the two workers that presented the token, and only those
    assert all(sum(w["working"] for w in p["workers"]) == 2 for p in points)
    assert run.rogue_exit is not None  # it was told to quit


def test_a_point_waits_for_its_remote_workers_and_says_which_are_missing(tmp_path: Path):
    (tmp_path / "token").write_text("t")
    remote = Remote(2, f"127.0.0.1:{free_port()}", str(tmp_path / "token"), wait=1.0)
    hello = Workload("hello", (("/hello", 1.0),))
    run = start_load(
        Load(users=2, duration=1), hello, "http://127.0.0.1:9", 1, tmp_path, None, remote=remote
    )
    try:
        with pytest.raises(LoadError) as caught:
            wait_load(run)
    finally:
        stop_load(run)
    assert str(caught.value) == (
        f"waited 1 s for 2 load workers on {remote.bind}: 0 presented the token (none), 2 missing"
    )


@pytest.mark.parametrize(
    ("table", "why"),
    [
        ('[target]\nkind = "url"\nurl = "http://198.18.0.2:8000"\n', "target.url: expected"),
        (
            '[target]\nkind = "builtin"\n[remote]\nworkers = 1\nbind = "198.18.0.1:5557"\n'
            'token_file = "token"\n',
            "remote.bind: expected",
        ),
    ],
)
def test_an_address_beyond_loopback_is_refused_unless_the_scenario_lists_it(
    tmp_path: Path, table: str, why: str
):
    (tmp_path / "token").write_text("t")
    rest = '[sweep]\nworkers = [1]\n[workloads]\nhello = { "/" = 1 }\n[load]\nusers = 1\nduration = 1\n'
    scenario = tmp_path / "s.toml"
    scenario.write_text(table + rest)
    with pytest.raises(ScenarioError, match="network.allow") as caught:
        load_scenario(scenario)
    assert why in str(caught.value)
    host = "198.18.0.2" if "url" in table else "198.18.0.1"
    scenario.write_text(table + rest + f'[network]\nallow = ["{host}"]\n')
    assert load_scenario(scenario).network.allow == (host,)
