"""A url target that names its clusterlab primary's /metrics: the lab reads per-worker counts
and hand-offs from it, equal to what the client saw (each response names its worker); the field
is for url targets on loopback only."""

import collections
import http.client
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clusterlab.lab.config.scenario import ScenarioError, Target, load_scenario
from clusterlab.lab.running.targets import TargetConfig, UrlTarget

pytestmark = pytest.mark.timeout(60)
REQUESTS = 40


@pytest.fixture
def served(tmp_path):
    """`clusterlab serve` with two workers and its metrics: (its url, its metrics url)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "clusterlab.cli", "serve", "--workers", "2", "--port", "0"]
        + ["--metrics", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        urls: dict[str, str] = {}
        assert proc.stdout is not None
        for line in proc.stdout:
            if found := re.match(r"metrics on (\S+)", line):
                urls["metrics"] = found[1]
            if found := re.match(r"serving (http://\S+?)/? with", line):
                urls["url"] = found[1]
                break
        assert urls.keys() == {"metrics", "url"}, urls
        yield urls["url"], urls["metrics"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def get_worker(url: str) -> str:
    """One request on a new connection; the worker that answered it."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/hello")
        answer = conn.getresponse()
        answer.read()
        assert answer.status == 200
        return str(answer.getheader("X-Worker-Id"))
    finally:
        conn.close()


def test_the_lab_reads_a_url_targets_per_worker_counts_from_its_metrics(served, tmp_path):
    url, metrics = served
    config = TargetConfig(
        target=Target(kind="url", url=url, metrics=metrics),
        workers=2,
        policy="rr",
        log_path=tmp_path / "target.log",
    )
    target = UrlTarget(config)  # serve said it serves: no probe connection to count
    before, rr_before = target.snapshot(), target.supervision()["rr"]
    seen = collections.Counter(get_worker(url) for _ in range(REQUESTS))
    after, rr_after = target.snapshot(), target.supervision()["rr"]
    assert len(seen) == 2  # both workers served (round robin)
    for worker, count in seen.items():
        start = before.get(worker, {"requests": 0, "connections": 0})
        assert after[worker]["requests"] - start["requests"] == count
        assert after[worker]["connections"] - start["connections"] == count
        assert after[worker]["t"] >= time.time() - 60
    assert rr_before is not None and rr_after is not None
    assert rr_after["handed"] - rr_before["handed"] == REQUESTS
    assert rr_after["accepted"] - rr_before["accepted"] == REQUESTS


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ('kind = "builtin"\nmetrics = "http://127.0.0.1:9464/metrics"', "target.kind = 'url'"),
        (
            'kind = "url"\nurl = "http://127.0.0.1:8000"\nmetrics = "http://10.0.0.1:9464/metrics"',
            "loopback only",
        ),
    ],
)
def test_metrics_is_for_url_targets_on_loopback_only(tmp_path: Path, target: str, why: str):
    scenario = tmp_path / "s.toml"
    scenario.write_text(
        f'[target]\n{target}\n[sweep]\nworkers = [2]\n[workloads]\nhello = {{ "/" = 1 }}\n'
        "[load]\nusers = 2\nduration = 2\n"
    )
    with pytest.raises(ScenarioError) as caught:
        load_scenario(scenario)
    assert "target.metrics" in str(caught.value) and why in str(caught.value)


def test_a_lab_run_on_a_url_target_counts_its_workers_from_metrics_and_says_so(served, tmp_path):
    url, metrics = served
    scenario = tmp_path / "url.toml"
    scenario.write_text(
        f'[target]\nkind = "url"\nurl = "{url}"\nmetrics = "{metrics}"\n'
        '[sweep]\nworkers = [2]\npolicies = ["rr"]\n[workloads]\nhello = { "/hello" = 1 }\n'
        '[load]\nusers = 4\nwarmup = 0.5\nduration = 1\nengine = "wrk"\n'
    )
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "clusterlab.cli", "run", str(scenario), "--out", str(out), "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    results = (out / "results.csv").read_text().splitlines()
    columns = results[0].split(",")
    assert results[1].split(",")[columns.index("counts_source")] == "metrics"
    assert f"from the target's metrics endpoint, {metrics}" in (out / "report.md").read_text()
