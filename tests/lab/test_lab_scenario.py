"""Scenario files: the bundled ones are valid (for the loader and for the shipped JSON Schema),
and every kind of mistake is one line naming the file, the field, what was expected and got."""

import json
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from clusterlab.lab.config.scenario import ScenarioError, load_scenario, schema

pytestmark = pytest.mark.parallel_ok  # starts no load: runs beside the cluster tests

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = sorted((ROOT / "scenarios").glob("*.toml"))
VALID = """
[target]
kind = "builtin"
[sweep]
workers = [1, "2x"]
policies = ["rr", "none"]
[workloads]
hello = { "/hello" = 1 }
[load]
users = 4
duration = 3
"""


def test_the_six_bundled_scenarios_exist_and_load():
    assert {p.stem for p in BUNDLED} == {
        "quick",
        "policies",
        "capacity",
        "ci",
        "crash",
        "scheduling",
    }
    for path in BUNDLED:
        assert load_scenario(path).name == path.stem


def test_bundled_scenarios_are_the_packaged_ones():
    packaged = resources.files("clusterlab.lab.config").joinpath("scenarios")
    for path in BUNDLED:
        assert path.read_text() == packaged.joinpath(path.name).read_text()


def test_bundled_scenarios_pass_the_shipped_json_schema():
    import tomllib

    for path in BUNDLED:
        jsonschema.validate(tomllib.loads(path.read_text()), schema())


def test_the_schema_file_is_itself_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(schema())
    text = resources.files("clusterlab.lab.analysis").joinpath("summary.schema.json").read_text()
    jsonschema.Draft202012Validator.check_schema(json.loads(text))


def test_a_valid_scenario_parses_with_defaults(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text(VALID)
    scenario = load_scenario(path)
    assert scenario.sweep.workers == (1, "2x") and scenario.sweep.repeats == 1
    assert scenario.load.model == "closed" and scenario.load.connection == "keep-alive"
    assert scenario.workloads[0].requests == (("/hello", 1.0),)


CASES = [
    (
        'workers = [1, "2x"]',
        'workers = [1, "2x", -1]',
        'sweep.workers[2]: expected a positive integer up to 256 or "2x", got -1',
    ),
    (
        'workers = [1, "2x"]',
        'workers = ["two"]',
        'sweep.workers[0]: expected a positive integer up to 256 or "2x", got "two"',
    ),
    (
        'workers = [1, "2x"]',
        "workers = []",
        "sweep.workers: expected a non-empty list of worker counts, got []",
    ),
    (
        'policies = ["rr", "none"]',
        'policies = ["rr", "fifo"]',
        'sweep.policies[1]: expected one of "rr", "none", "reuseport", "least-conn", '
        '"p2c", "jiq", "hash", "hash-bounded", "weighted", "random" or "module:Name", got "fifo"',
    ),
    (
        'policies = ["rr", "none"]',
        'policies = ["rr", "rr"]',
        'sweep.policies: expected distinct items, got ["rr", "rr"]',
    ),
    (
        "users = 4",
        "users = 0",
        "load.users: expected an integer from 1 to 10000 or a non-empty list of distinct ones, got 0",
    ),
    (
        "users = 4",
        'users = "many"',
        'load.users: expected an integer from 1 to 10000 or a non-empty list of distinct ones, got "many"',
    ),
    (
        "users = 4\n",
        "",
        "load.users: expected an integer from 1 to 10000 or a non-empty list of distinct ones, got nothing",
    ),
    ("duration = 3", "duration = 3\ncolour = 1", "load.colour: expected one of the fields"),
    (
        "duration = 3",
        'duration = 3\nmodel = "open"',
        "load.rate: expected a rate when load.model = 'open', got nothing",
    ),
    (
        "duration = 3",
        "duration = 3\nrate = 100",
        "load.rate: expected no rate when load.model = 'closed'",
    ),
    (
        "duration = 3",
        'duration = 3\nprocesses = "lots"',
        'load.processes: expected a positive integer or "auto", got "lots"',
    ),
    (
        "duration = 3",
        'duration = 3\nconnection = "close"',
        'load.connection: expected "keep-alive" or "new", got "close"',
    ),
    ('kind = "builtin"', 'kind = "docker"', 'target.kind: expected one of "builtin"'),
    (
        'kind = "builtin"',
        'kind = "asgi"',
        "target.app: expected a value when target.kind = 'asgi', got nothing",
    ),
    (
        'kind = "builtin"',
        'kind = "asgi"\napp = "no colon"',
        'target.app: expected "module:attribute", got "no colon"',
    ),
    (
        'kind = "builtin"',
        'kind = "url"\nurl = "http://example.com"',
        'target.url: expected "http://127.0.0.1:PORT"',
    ),
    (
        'kind = "builtin"',
        'kind = "command"\ncommand = ["srv"]',
        "target.command: expected a {port} placeholder",
    ),
    (
        'hello = { "/hello" = 1 }',
        'hello = { "/hello" = 0 }',
        'workloads.hello."/hello": expected a positive weight, got 0',
    ),
    (
        'hello = { "/hello" = 1 }',
        'hello = { "hello" = 1 }',
        'workloads.hello: expected paths that start with "/", got "hello"',
    ),
    (
        '[workloads]\nhello = { "/hello" = 1 }\n',
        "",
        "workloads: expected a table of named request mixes, got nothing",
    ),
    ("[target]", "[faults]\nkill = 1\n[target]", "faults: expected a list of fault tables"),
    ("[target]", 'name = "has space"\n[target]', "name: expected a name of letters"),
    (
        "[target]",
        '[report]\nplots = ["pie"]\n[target]',
        'report.plots[0]: expected one of "throughput"',
    ),
]


@pytest.mark.parametrize(("old", "new", "message"), CASES, ids=[c[2][:40] for c in CASES])
def test_each_mistake_is_one_line_naming_file_field_expected_and_got(tmp_path, old, new, message):
    assert old in VALID
    path = tmp_path / "bad.toml"
    path.write_text(VALID.replace(old, new, 1))
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: ") and message in text, text
    assert "\n" not in text


def test_broken_toml_and_missing_files_name_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[target\nkind=1")
    with pytest.raises(ScenarioError, match=r"broken.toml: not valid TOML: .*line 1"):
        load_scenario(path)
    with pytest.raises(ScenarioError, match=r"nope.toml: no such file"):
        load_scenario(tmp_path / "nope.toml")
