"""The lab's side of pluggable policies, checked without load: sweep.policies takes every
built-in scheduler and "module:Name", refuses anything else in one line (exit 2 from the command
line); hash is refused for wrk; the slow fault's options; the cost distributions of /cpu and /io
(means and shapes over many draws) and their bad input."""

import math
import random
import statistics
import subprocess
import sys
from urllib.parse import parse_qs

import pytest

from clusterlab.cluster import _policies as policies
from clusterlab.cluster._policies import NAMES
from clusterlab.lab.config.scenario import (
    CLIENT_KEYED,
    ScenarioError,
    load_scenario,
    schema,
    wrk_refusal,
)
from clusterlab.lab.running.faults import PlannedFault
from clusterlab.lab.spawned import endpoints
from clusterlab.lab.spawned.endpoints import MAX_MS, BadQuery, draw_ms

pytestmark = pytest.mark.parallel_ok  # starts no load: runs beside the cluster tests

BASE = """
[target]
kind = "builtin"
[sweep]
workers = [2]
policies = {policies}
[workloads]
hello = {{ "/hello" = 1 }}
[load]
users = 4
duration = 3
{extra}
"""


def write(tmp_path, policies='["rr"]', extra=""):
    path = tmp_path / "s.toml"
    path.write_text(BASE.format(policies=policies, extra=extra))
    return path


def refused(tmp_path, policies='["rr"]', extra="") -> str:
    with pytest.raises(ScenarioError) as caught:
        load_scenario(write(tmp_path, policies, extra))
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "s.toml"))
    return message


def test_the_schema_lists_exactly_the_clusters_policy_names():
    items = schema()["properties"]["sweep"]["properties"]["policies"]["items"]
    assert tuple(items["anyOf"][0]["enum"]) == NAMES


def test_every_built_in_policy_name_is_taken(tmp_path):
    names = "[" + ", ".join(f'"{n}"' for n in NAMES) + "]"
    assert load_scenario(write(tmp_path, names)).sweep.policies == NAMES


def test_a_scheduler_as_module_name_is_taken_when_it_imports(tmp_path):
    policy = "clusterlab.cluster._policies:TwoChoices"
    assert load_scenario(write(tmp_path, f'["rr", "{policy}"]')).sweep.policies[1] == policy


@pytest.mark.parametrize(
    ("policies", "says"),
    [
        ('["rr", "fastest"]', 'sweep.policies[1]: expected one of "rr", "none"'),
        ('["RR"]', 'or "module:Name", got "RR"'),
        ('["least-conn", "least-conn"]', "expected distinct items"),
        ('["nosuchmodule_x:Thing"]', "expected a Scheduler that imports from"),
        ('["clusterlab.cluster._policies:Nope"]', "has no attribute 'Nope'"),
        ('["clusterlab.cluster._policies:NAMES"]', "not a Scheduler subclass or instance"),
    ],
)
def test_a_bad_policy_is_one_line_naming_it(tmp_path, policies, says):
    assert says in refused(tmp_path, policies)


def test_a_bad_policy_exits_two_from_the_command_line_and_writes_nothing(tmp_path):
    path = write(tmp_path, '["jiq", "fastest"]')
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "clusterlab.cli", "run", str(path), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "sweep.policies[1]" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("keyed", ["hash", "hash-bounded"])
def test_hash_is_refused_for_wrk_and_runs_on_locust(tmp_path, keyed):
    assert f"'{keyed}'" in refused(tmp_path, f'["rr", "{keyed}"]', 'engine = "wrk"')
    scenario = load_scenario(write(tmp_path, f'["rr", "{keyed}"]'))
    assert "wrk connects from a single address" in (wrk_refusal(scenario) or "")


def test_the_lab_knows_every_built_in_policy_that_keys_on_the_client():
    assert CLIENT_KEYED == policies.CLIENT_KEYED  # the lab's copy, kept without importing


SLOW = """
[[faults]]
kind = "{kind}"
every = 2
{options}
"""


def test_a_slow_fault_takes_a_factor_and_a_length_and_sends_them(tmp_path):
    extra = SLOW.format(kind="slow", options='factor = 8\nlength = 1.5\ntarget = "slot:1"')
    fault = load_scenario(write(tmp_path, extra=extra)).faults[0]
    assert (fault.kind, fault.factor, fault.length) == ("slow", 8, 1.5)
    command = PlannedFault(0, 0, 2.0, fault, 0.5).command()
    assert command["factor"] == 8 and command["length"] == 1.5


@pytest.mark.parametrize(
    ("kind", "options", "says"),
    [
        ("sigkill", "factor = 4", "faults[0].factor: expected no factor unless kind = 'slow'"),
        ("hang", "length = 2", "faults[0].length: expected no length unless kind = 'slow'"),
        ("slow", "factor = 1", "faults[0].factor: expected a slow-down factor from 1.5 to 100"),
        ("slow", "length = 0", "faults[0].length: expected a number of seconds in (0, 3600]"),
        ("crawl", "", 'faults[0].kind: expected one of "sigkill"'),
    ],
)
def test_bad_slow_fault_options_are_one_line(tmp_path, kind, options, says):
    assert says in refused(tmp_path, extra=SLOW.format(kind=kind, options=options))


# --- cost distributions ------------------------------------------------------------------

N = 40_000


def draws(query: str, seed: int = 7) -> list[float]:
    rng = random.Random(seed)
    parsed = parse_qs(query, keep_blank_values=True)
    return [draw_ms(parsed, rng) for _ in range(N)]


def test_a_fixed_cost_is_the_default_and_ms_is_kept():
    assert draw_ms({}) == 1.0 and set(draws("ms=3")[:100]) == {3.0}


def test_exponential_costs_have_the_mean_and_the_memoryless_shape():
    values = draws("dist=exp&mean=2")
    mean = statistics.fmean(values)
    assert abs(mean - 2.0) < 0.05  # the standard error is 2/200 = 0.01
    assert abs(statistics.stdev(values) / mean - 1.0) < 0.05  # CV of an exponential: 1
    above = sum(v > 2.0 for v in values) / N
    assert abs(above - math.exp(-1)) < 0.01  # P(X > mean) = 1/e


def test_bimodal_costs_are_only_the_two_values_in_the_asked_share():
    values = draws("dist=bimodal&fast=1&slow=50&p=0.1")
    assert set(values) == {1.0, 50.0}
    share = values.count(50.0) / N
    assert abs(share - 0.1) < 0.01  # σ = 0.0015
    assert abs(statistics.fmean(values) - (0.9 * 1 + 0.1 * 50)) < 0.2


def test_lognormal_costs_have_the_mean_and_a_heavy_right_tail():
    values = draws("dist=lognormal&mean=2&sigma=1")
    assert abs(statistics.fmean(values) - 2.0) < 0.1
    median = statistics.median(values)
    assert abs(median - 2.0 * math.exp(-0.5)) < 0.05  # e^(μ), μ = ln(mean) − σ²/2
    assert statistics.quantiles(values, n=100)[98] > 5 * median


def test_draws_above_the_limit_are_cut_to_it():
    values = draws("dist=exp&mean=1000")
    assert max(values) == MAX_MS and min(values) >= 0


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("dist=zipf", "dist: expected one of const, exp, lognormal, bimodal, got 'zipf'"),
        ("dist=exp&mean=-1", "mean: expected 0 to 1000 ms, got -1"),
        ("dist=exp&mean=abc", "mean: expected a number of milliseconds"),
        ("dist=bimodal&p=2", "p: expected a probability from 0 to 1, got 2"),
        ("dist=bimodal&p=x", "p: expected a probability from 0 to 1, got 'x'"),
        ("dist=exp&ms=3", "ms: expected only with dist=const, got dist=exp"),
        ("mean=3", "mean: expected only with dist=exp/lognormal, got dist=const"),
        ("dist=exp&sigma=1", "sigma: expected only with dist=lognormal, got dist=exp"),
    ],
)
def test_bad_distribution_queries_are_refused_with_the_reason(query, says):
    with pytest.raises(BadQuery, match="^" + says.replace("(", r"\(").replace(".", r"\.")):
        draw_ms(parse_qs(query, keep_blank_values=True))


def test_the_slow_factor_multiplies_the_cost_only_inside_its_window():
    query = parse_qs("ms=3")
    slow = endpoints.SLOW
    try:
        slow.start(5.0, 60.0)
        assert endpoints._costs("/cpu", query) == (15.0, 0.0)
        assert endpoints._costs("/io", query) == (0.0, 15.0)
        slow.start(5.0, -1.0)  # a window that is over
        assert endpoints._costs("/cpu", query) == (3.0, 0.0)
    finally:
        slow.factor, slow.until = 1.0, 0.0


TWO_WORKLOADS = """
[workloads]
even = {{ "/cpu?dist=exp&mean=2" = 1 }}
slowed = {{ "/cpu?ms=2" = 1 }}
[[faults]]
kind = "slow"
every = 1
workloads = {workloads}
"""


def two_workloads(tmp_path, workloads: str):
    text = BASE.format(policies='["rr"]', extra="").replace(
        '[workloads]\nhello = { "/hello" = 1 }', ""
    )
    path = tmp_path / "s.toml"
    path.write_text(text + TWO_WORKLOADS.format(workloads=workloads))
    return path


def test_a_fault_stream_can_be_kept_to_some_workloads(tmp_path):
    from clusterlab.lab.running.faults import schedule

    scenario = load_scenario(two_workloads(tmp_path, '["slowed"]'))
    assert scenario.faults[0].workloads == ("slowed",)
    assert [p.offset for p in schedule(scenario.faults, 3.0, 0, "slowed")] == [1.0, 2.0]
    assert schedule(scenario.faults, 3.0, 0, "even") == []


def test_a_fault_for_an_unknown_workload_is_one_line(tmp_path):
    with pytest.raises(
        ScenarioError,
        match=r"faults\[0\]\.workloads\[1\]: expected one of the workloads even, slowed, got \"hello\"$",
    ):
        load_scenario(two_workloads(tmp_path, '["slowed", "hello"]'))


def test_an_empty_workloads_list_on_a_fault_is_one_line(tmp_path):
    with pytest.raises(ScenarioError, match=r"faults\[0\]\.workloads: expected a non-empty list"):
        load_scenario(two_workloads(tmp_path, "[]"))


def test_the_endpoint_answers_400_with_the_reason_for_a_bad_distribution():
    import asyncio

    sent = []

    async def receive():
        return {"type": "http.request"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": "/cpu", "query_string": b"dist=zipf"}
    asyncio.run(endpoints.builtin_app(scope, receive, send))
    assert sent[0]["status"] == 400
    assert sent[1]["body"].startswith(b"dist: expected one of const, exp")
    sent.clear()
    scope = {"type": "http", "path": "/io", "query_string": b"dist=bimodal&fast=0&slow=0"}
    asyncio.run(endpoints.builtin_app(scope, receive, send))
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"io\n"
