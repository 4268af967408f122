"""Scenario files with faults and respawn: what parses (with its defaults), and every mistake as
one line naming the file, the field, what was expected and what was got; from the command line,
exit status 2 and nothing written."""

import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest

from clusterlab.lab.config.scenario import (
    Fault,
    Heartbeat,
    Respawn,
    ScenarioError,
    load_scenario,
    schema,
)

pytestmark = pytest.mark.parallel_ok  # starts no load: runs beside the cluster tests

ROOT = Path(__file__).resolve().parents[2]
BASE = """
[target]
kind = "builtin"
[sweep]
workers = [2]
[workloads]
hello = { "/hello" = 1 }
[load]
users = 4
duration = 10
"""
FAULTS = """
[[faults]]
kind = "sigkill"
every = 2
"""


def load(tmp_path, text):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return load_scenario(path), path


def test_the_bundled_crash_scenario_has_faults_and_backoff_respawn():
    scenario = load_scenario(ROOT / "scenarios" / "crash.toml")
    assert scenario.sweep.policies == ("rr", "none") and scenario.sweep.workers == ("2x",)
    assert [f.kind for f in scenario.faults] == ["sigkill", "hang"]
    assert scenario.faults[0].every == 3 and scenario.faults[1].hang == "handler"
    assert scenario.respawn is not None and scenario.respawn.policy == "backoff"
    assert scenario.respawn.heartbeat == Heartbeat(interval=0.5, timeout=2)
    jsonschema.validate(tomllib.loads((ROOT / "scenarios" / "crash.toml").read_text()), schema())


def test_faults_and_respawn_parse_with_their_defaults(tmp_path):
    scenario, _ = load(
        tmp_path,
        BASE
        + FAULTS
        + '[[faults]]\nkind = "exit"\ncode = 7\nrate = 0.5\nseed = 3\ntarget = "slot:1"\n'
        + "[respawn]\nheartbeat = { interval = 0.5, timeout = 2 }\n",
    )
    assert scenario.faults == (
        Fault(kind="sigkill", every=2),
        Fault(kind="exit", rate=0.5, seed=3, target="slot:1", code=7),
    )
    assert scenario.respawn == Respawn(heartbeat=Heartbeat(0.5, 2))
    assert scenario.respawn.policy == "backoff" and scenario.respawn.max_restarts == 5
    stored = scenario.to_dict()
    assert stored["faults"][1]["code"] == 7
    assert stored["respawn"]["heartbeat"] == {"interval": 0.5, "timeout": 2}


def test_without_a_respawn_table_nothing_is_restarted(tmp_path):
    scenario, _ = load(tmp_path, BASE + FAULTS)
    assert scenario.respawn is None and scenario.to_dict()["respawn"] is None


MISTAKES = [
    ('[faults]\nkind = "sigkill"\nevery = 1', "faults: expected a list of fault tables ([[faults]]), got a table"),
    ('[[faults]]\nkind = "sigkill"', "faults[0]: expected either every (seconds) or rate (per second), got neither"),
    ('[[faults]]\nkind = "sigkill"\nevery = 1\nrate = 1', "faults[0]: expected either every (seconds) or rate (per second), got both"),
    ('[[faults]]\nkind = "boom"\nevery = 1', 'faults[0].kind: expected one of "sigkill", "sigterm", "exit", "exception", "hang", "slow", got "boom"'),
    ('[[faults]]\nkind = "sigkill"\nevery = 0', "faults[0].every: expected a number of seconds in (0, 3600], got 0"),
    ('[[faults]]\nkind = "sigkill"\nrate = "often"', 'faults[0].rate: expected a number of faults per second in (0, 100], got "often"'),
    ('[[faults]]\nkind = "sigkill"\nevery = 1\nstop = 11', "faults[0].stop: expected at most load.duration (10), got 11"),
    ('[[faults]]\nkind = "sigkill"\nevery = 1\nstart = 5\nstop = 5', "faults[0].start: expected less than stop (5), got 5"),
    ('[[faults]]\nkind = "sigkill"\nevery = 1\ntarget = "slot 1"', 'faults[0].target: expected "random", "busiest", "slot:N" or "worker:N", got "slot 1"'),
    ('[[faults]]\nkind = "sigkill"\nevery = 1\ncode = 1', "faults[0].code: expected no code unless kind = 'exit', got 1"),
    ('[[faults]]\nkind = "exit"\nevery = 1\ncode = 300', "faults[0].code: expected an exit status from 0 to 255, got 300"),
    ('[[faults]]\nkind = "exit"\nevery = 1\nfatal = true', "faults[0].fatal: expected no fatal unless kind = 'exception', got true"),
    ('[[faults]]\nkind = "hang"\nevery = 1\nhang = "forever"', 'faults[0].hang: expected "sigstop" or "handler", got "forever"'),
    ('[[faults]]\nkind = "sigkill"\nevery = 1\nseed = -1', "faults[0].seed: expected an integer >= 0, got -1"),
    ('[[faults]]\nkind = "sigkill"\nevery = 1\nwhen = 3', "faults[0].when: expected one of the fields kind, every"),
    ('[respawn]\npolicy = "sometimes"', 'respawn.policy: expected one of "never", "immediate", "backoff", got "sometimes"'),
    ('[respawn]\npolicy = "immediate"\ncap = 3', "respawn.cap: expected no cap unless policy = 'backoff', got 3"),
    ("[respawn]\nbase = 2\ncap = 1", "respawn.cap: expected at least respawn.base (2), got 1"),
    ("[respawn]\nmax_restarts = 1.5", "respawn.max_restarts: expected an integer >= 0, got 1.5"),
    ("[respawn]\nwithin = 0", "respawn.within: expected a number of seconds in (0, 86400], got 0"),
    ("[respawn]\nheartbeat = 1", "respawn.heartbeat: expected a table { interval = s, timeout = s }, got 1"),
    ("[respawn]\nheartbeat = { interval = 1 }", "respawn.heartbeat.timeout: expected a number of seconds in (0, 600], got nothing"),
    ("[respawn]\nheartbeat = { interval = 1, timeout = 1 }", "respawn.heartbeat.timeout: expected more than respawn.heartbeat.interval (1), got 1"),
    ("[respawn]\nlimit = 3", "respawn.limit: expected one of the fields policy, base"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "message"), MISTAKES, ids=[m[1][:48] for m in MISTAKES])
def test_each_faults_or_respawn_mistake_is_one_line(tmp_path, extra, message):
    path = tmp_path / "bad.toml"
    path.write_text(BASE + extra + "\n")
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: ") and message in text, text
    assert "\n" not in text


TARGETS = [
    ('kind = "url"\nurl = "http://127.0.0.1:9"', FAULTS, "faults: expected a target the lab runs as a cluster"),
    ('kind = "command"\ncommand = ["srv", "{port}"]', "[respawn]\n", "respawn: expected a target the lab runs as a cluster"),
    ('kind = "script"\nscript = "w.py"', '[[faults]]\nkind = "exception"\nevery = 1', "faults[0].kind: expected \"sigkill\", \"sigterm\" or \"hang\" with hang = \"sigstop\" for target.kind = 'script'"),
    ('kind = "script"\nscript = "w.py"', '[[faults]]\nkind = "hang"\nhang = "handler"\nevery = 1', 'got "hang" with hang = "handler"'),
    ('kind = "wsgi"\napp = "a:b"', '[[faults]]\nkind = "hang"\nhang = "handler"\nevery = 1', "faults[0].hang: expected \"sigstop\" for target.kind = 'wsgi'"),
]  # fmt: skip


@pytest.mark.parametrize(("target", "extra", "message"), TARGETS, ids=[t[2][:40] for t in TARGETS])
def test_faults_a_target_cannot_take_are_refused(tmp_path, target, extra, message):
    (tmp_path / "w.py").write_text("")
    path = tmp_path / "bad.toml"
    path.write_text(BASE.replace('kind = "builtin"', target) + extra + "\n")
    with pytest.raises(ScenarioError, match=None) as caught:
        load_scenario(path)
    assert message in str(caught.value), str(caught.value)


def test_a_script_target_takes_signals_and_sigstop_hangs(tmp_path):
    (tmp_path / "w.py").write_text("")
    text = BASE.replace('kind = "builtin"', 'kind = "script"\nscript = "w.py"')
    extra = '[[faults]]\nkind = "sigterm"\nevery = 1\n[[faults]]\nkind = "hang"\nevery = 2\n'
    scenario, _ = load(tmp_path, text + extra)
    assert [f.kind for f in scenario.faults] == ["sigterm", "hang"]


def test_clusterlab_run_with_bad_faults_exits_two_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(BASE + '[[faults]]\nkind = "sigkill"\nevery = 1\ncode = 4\n')
    done = subprocess.run(
        [sys.executable, "-m", "clusterlab.cli", "run", str(bad), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert f"{bad}: faults[0].code: expected no code unless kind = 'exit'" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


def test_start_method_is_read_and_refused_for_targets_the_lab_does_not_start(tmp_path):
    base = '[sweep]\nworkers = [1]\n[workloads]\nh = { "/hello" = 1 }\n[load]\nusers = 1\nduration = 1\n'
    good = tmp_path / "good.toml"
    good.write_text('[target]\nkind = "builtin"\nstart_method = "forkserver"\n' + base)
    assert load_scenario(good).target.start_method == "forkserver"
    assert load_scenario(good).to_dict()["target"]["start_method"] == "forkserver"
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[target]\nkind = "url"\nurl = "http://127.0.0.1:9"\nstart_method = "forkserver"\n' + base
    )
    with pytest.raises(ScenarioError, match="target.start_method"):
        load_scenario(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text('[target]\nkind = "builtin"\nstart_method = "fork"\n' + base)
    with pytest.raises(ScenarioError, match="start_method"):
        load_scenario(typo)
