"""Scenario files: read a TOML file, check it against the bundled JSON Schema, return a Scenario.

Every error is one ``ScenarioError`` line naming the file, the field, what was expected and what
was found; nothing else in the lab runs before a scenario has passed here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import jsonschema

from clusterlab import available_parallelism
from clusterlab.lab.config.gates import Gate, parse_gates
from clusterlab.lab.config.slo import Search, Slo, parse_slo

PLOTS = (
    "throughput",
    "fairness",
    "latency",
    "share",
    "usl",
    "timeline",
    "hockey",
    "efficiency",
    "policies",
)
TargetKind = Literal["builtin", "asgi", "wsgi", "script", "command", "url"]
FaultKind = Literal["sigkill", "sigterm", "exit", "exception", "hang", "slow"]
RespawnMode = Literal["never", "immediate", "backoff"]
CLUSTER_KINDS = ("builtin", "asgi", "wsgi", "script")
#: Seconds an asgi/wsgi app gets to import at validation (in a child process: imports can have
#: side effects, and one that hangs must not hang the lab).
APP_IMPORT_TIMEOUT = 30.0
#: Seconds instead of APP_IMPORT_TIMEOUT (for tests of an import that hangs).
IMPORT_TIMEOUT_ENV = "CLUSTERLAB_LAB_IMPORT_TIMEOUT"
#: The most workers a point may run: an absolute count (the schema's maximum) or a multiple.
MAX_WORKERS = 256
#: The hosts the lab uses without being told (anything else must be in ``network.allow``).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


class ScenarioError(ValueError):
    """A scenario file that cannot be run; the message is the one line to show the user."""


@dataclass(frozen=True)
class Target:
    kind: TargetKind
    app: str | None = None
    app_dir: str | None = None
    script: str | None = None
    command: tuple[str, ...] = ()
    url: str | None = None
    worker_header: str = "X-Worker-Id"
    ready_timeout: float = 30.0
    start_method: Literal["exec", "forkserver"] = "exec"
    #: command targets: ready once this regex has matched ``ready_count`` lines of the
    #: command's output (default: once per worker); no connection is made to find out.
    ready_line: str | None = None
    ready_count: int | None = None
    #: url targets: the server's process (and its descendants) to sample, by pid or pid file.
    pid: int | None = None
    pidfile: str | None = None
    #: url targets: a clusterlab primary's /metrics, scraped for per-worker counts.
    metrics: str | None = None

    @property
    def is_cluster(self) -> bool:
        """True when the lab starts a clusterlab primary itself (per-worker counts over the channel)."""
        return self.kind in ("builtin", "asgi", "wsgi", "script")


@dataclass(frozen=True)
class Sweep:
    workers: tuple[int | str, ...]
    policies: tuple[str, ...] = ("rr",)
    repeats: int = 1


@dataclass(frozen=True)
class Workload:
    name: str
    requests: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Load:
    users: int
    duration: float
    spawn_rate: float | None = None
    warmup: float = 2.0
    model: Literal["closed", "open"] = "closed"
    rate: float | None = None
    wait: float = 0.0
    connection: Literal["keep-alive", "new"] = "keep-alive"
    processes: int | Literal["auto"] = 1
    generator_bound_cpu: float = 85.0
    #: "locust" (scripted users, the open model, faults), "wrk" (the native engine, for
    #: throughput points) or "auto" (wrk when installed and the scenario needs nothing only
    #: locust does).
    engine: Literal["auto", "locust", "wrk"] = "auto"
    #: a load sweep: the users (closed model) or the rates (open model) of each load level, as
    #: written; empty when load.users and load.rate are single values (``users`` and ``rate``
    #: then hold them; with a sweep they hold the first level).
    users_levels: tuple[int, ...] = ()
    rate_levels: tuple[float, ...] = ()
    #: ``rate = "75%"``: the open model's rate as a share of capacity (0.75), measured per
    #: workload and worker count by a closed-model probe before the points (``rate`` is None
    #: until then: each point carries its own rate).
    rate_share: float | None = None

    @property
    def sweeps(self) -> bool:
        """True when the load itself is a sweep axis (a list of users or of rates)."""
        return bool(self.users_levels or self.rate_levels)


@dataclass(frozen=True)
class Fault:
    """One stream of injected faults (a ``[[faults]]`` table).

    Times are seconds from the start of the measured window. ``every``: the first fault at
    ``start`` (default: one interval in), then one per interval; ``rate``: Poisson arrivals at
    that many faults per second from ``start``, drawn from ``seed``. ``target``: ``"random"``
    (seeded), ``"busiest"`` (most requests in the last second), ``"slot:N"`` or ``"worker:N"``.
    ``slow``: the worker serves ``factor`` times slower for ``length`` seconds.
    """

    kind: FaultKind
    every: float | None = None
    rate: float | None = None
    seed: int = 0
    start: float | None = None
    stop: float | None = None
    target: str = "random"
    code: int = 1
    hang: Literal["sigstop", "handler"] = "sigstop"
    fatal: bool = False
    factor: float = 4.0
    length: float = 5.0
    #: the workloads whose points get these faults (empty: every workload)
    workloads: tuple[str, ...] = ()


@dataclass(frozen=True)
class Heartbeat:
    interval: float
    timeout: float


@dataclass(frozen=True)
class Respawn:
    """How the lab's supervisor replaces workers: a ``clusterlab.supervisor.RestartPolicy`` (same
    defaults) and an optional ``HeartbeatPolicy``; past the restart limit the survivors keep
    serving (``on_limit="keep"``) so the run measures what is left."""

    policy: RespawnMode = "backoff"
    base: float = 0.1
    factor: float = 2.0
    cap: float = 10.0
    max_restarts: int = 5
    within: float = 10.0
    reset_after: float = 10.0
    seed: int = 0
    heartbeat: Heartbeat | None = None


@dataclass(frozen=True)
class Cpus:
    """How the load and the target share the machine's CPUs: ``split`` "auto" (separate CPU
    sets on machines with 4 or more usable CPUs), "on" or "off"; ``load``: how many CPUs the
    load gets when split (default ⌈N/4⌉)."""

    split: Literal["auto", "on", "off"] = "auto"
    load: int | None = None


@dataclass(frozen=True)
class Network:
    """Addresses beyond loopback the lab may load, scrape or bind: nothing else is ever used."""

    allow: tuple[str, ...] = ()

    def allows(self, host: str) -> bool:
        """True for a loopback name or address, or a host listed in ``allow``."""
        return host in LOOPBACK_HOSTS or host in self.allow


@dataclass(frozen=True)
class Remote:
    """Load from other machines: ``workers`` locust workers started there by ``clusterlab
    loadgen``, each presenting the token in ``token_file``, under a master that binds ``bind``
    for each point; a point waits ``wait`` seconds for them."""

    workers: int
    bind: str
    token_file: str
    wait: float = 30.0

    @property
    def host(self) -> str:
        return self.bind.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.bind.rsplit(":", 1)[1])


@dataclass(frozen=True)
class Report:
    out: str | None = None
    plots: tuple[str, ...] = PLOTS


@dataclass(frozen=True)
class Scenario:
    """A validated scenario. ``respawn`` is None when the file has no ``[respawn]`` table: then
    the lab never restarts a worker."""

    name: str
    path: str
    target: Target
    sweep: Sweep
    load: Load
    workloads: tuple[Workload, ...]
    report: Report = field(default_factory=Report)
    description: str = ""
    faults: tuple[Fault, ...] = ()
    respawn: Respawn | None = None
    gates: tuple[Gate, ...] = ()
    gates_table: dict[str, Any] = field(default_factory=dict)
    cpus: Cpus = field(default_factory=Cpus)
    #: the ``[slo]`` table (None without one) and search mode's settings (None: no search).
    slo: Slo | None = None
    slo_table: dict[str, Any] = field(default_factory=dict)
    search: Search | None = None
    network: Network = field(default_factory=Network)
    #: ``[remote]``: the load runs on locust workers of other machines (None: on this one).
    remote: Remote | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy, as stored in the run's meta.json."""
        return {
            "name": self.name,
            "path": self.path,
            "description": self.description,
            "target": _plain(self.target.__dict__),
            "sweep": _plain(self.sweep.__dict__),
            "load": _plain(self.load.__dict__),
            "workloads": {w.name: dict(w.requests) for w in self.workloads},
            "report": _plain(self.report.__dict__),
            "faults": [_plain(f.__dict__) for f in self.faults],
            "respawn": asdict(self.respawn) if self.respawn else None,
            "gates": self.gates_table,
            "cpus": asdict(self.cpus),
            "slo": self.slo_table or None,
            "search": asdict(self.search) if self.search else None,
            "network": _plain(self.network.__dict__),
            "remote": asdict(self.remote) if self.remote else None,
        }


def schema() -> dict[str, Any]:
    """The JSON Schema of scenario files (also shipped as ``scenario.schema.json``)."""
    text = resources.files("clusterlab.lab.config").joinpath("scenario.schema.json").read_text()
    result: dict[str, Any] = json.loads(text)
    return result


def bundled_scenarios() -> dict[str, Path]:
    """The scenarios shipped with the package, by name."""
    folder = resources.files("clusterlab.lab.config").joinpath("scenarios")
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml")}


def resolve_scenario(name: str | Path) -> Path:
    """A scenario file's path: ``name`` itself when it exists, else the bundled scenario of
    that name, else ``name`` (for ``load_scenario`` to report as missing)."""
    path = Path(name)
    bundled = bundled_scenarios()
    if not path.exists() and str(name) in bundled:
        return bundled[str(name)]
    return path


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; raise ``ScenarioError`` with one clear line."""
    path = Path(path)
    where = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScenarioError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{where}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{where}: not valid TOML: {exc}") from None
    return parse_scenario(data, where, default_name=path.stem)


def parse_scenario(data: dict[str, Any], where: str, default_name: str = "scenario") -> Scenario:
    """Validate already-parsed TOML data; ``where`` names the source in error messages."""
    _check_schema(data, where)
    target = _resolve_paths(Target(**_with_tuples(data["target"], ("command",))), where)
    _check_target(target, where)
    sweep_data = data["sweep"]
    sweep = Sweep(
        workers=tuple(sweep_data["workers"]),
        policies=tuple(sweep_data.get("policies", ("rr",))),
        repeats=sweep_data.get("repeats", 1),
    )
    _check_workers(sweep, where)
    _check_policy_imports(sweep, where)
    load = _load(data["load"])
    _check_load(load, where)
    workloads = tuple(
        Workload(name, tuple((p, float(w)) for p, w in mix.items()))
        for name, mix in data["workloads"].items()
    )
    report = Report(**_with_tuples(data.get("report", {}), ("plots",)))
    faults = tuple(Fault(**_with_tuples(t, ("workloads",))) for t in data.get("faults", ()))
    respawn = _respawn(data.get("respawn"))
    _check_faults(data.get("faults", []), faults, target, load, where)
    _check_fault_workloads(faults, workloads, where)
    _check_respawn(data.get("respawn", {}), respawn, target, where)
    try:
        gates = parse_gates(data.get("gates", {}))
    except ValueError as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    slo = _slo(data.get("slo"), where)
    search = Search(**data["search"]) if "search" in data else None
    _check_search(search, slo, load, data, where)
    network = Network(tuple(data.get("network", {}).get("allow", ())))
    remote = _remote(data.get("remote"), where)
    _check_addresses(target, network, remote, where)
    _check_remote(remote, load, where)
    _check_app_imports(target, where)  # last: the only check that runs code
    scenario = Scenario(
        name=data.get("name", default_name),
        path=where,
        target=target,
        sweep=sweep,
        load=load,
        workloads=workloads,
        report=report,
        description=data.get("description", ""),
        faults=faults,
        respawn=respawn,
        gates=gates,
        gates_table=dict(data.get("gates", {})),
        cpus=Cpus(**data.get("cpus", {})),
        slo=slo,
        slo_table=dict(data.get("slo", {})),
        search=search,
        network=network,
        remote=remote,
    )
    _check_engine(scenario)
    return scenario


def _check_schema(data: dict[str, Any], where: str) -> None:
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), e.path))
    if errors:
        raise ScenarioError(f"{where}: {_describe(errors[0])}")


def _describe(error: jsonschema.ValidationError) -> str:
    field_name = _field(error.absolute_path)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        known = ", ".join(error.schema.get("properties", {}))
        name = _field([*error.absolute_path, extra[0]]) if extra else field_name
        return f"{name}: expected one of the fields {known}, got an unknown field"
    if error.validator == "required":
        missing = next(k for k in error.validator_value if k not in error.instance)
        child = error.schema.get("properties", {}).get(missing, {})
        return f"{_field([*error.absolute_path, missing])}: expected {child.get('x-expected', 'a value')}, got nothing"
    expected = error.schema.get("x-expected") or error.message
    if error.validator == "uniqueItems":
        expected = "distinct items"
    return f"{field_name or '(top level)'}: expected {expected}, got {_got(error.instance)}"


def _resolve_paths(target: Target, where: str) -> Target:
    """Relative paths in a scenario are relative to the scenario file."""
    base = Path(where).resolve().parent
    app_dir = str((base / target.app_dir).resolve()) if target.app_dir else str(base)
    script = str((base / target.script).resolve()) if target.script else None
    pidfile = str((base / target.pidfile).resolve()) if target.pidfile else None
    return replace(target, app_dir=app_dir if target.app else None, script=script, pidfile=pidfile)


def _check_target(target: Target, where: str) -> None:
    needs = {"asgi": "app", "wsgi": "app", "script": "script", "command": "command", "url": "url"}
    key = needs.get(target.kind)
    if key and not getattr(target, key):
        raise ScenarioError(
            f"{where}: target.{key}: expected a value when target.kind = {target.kind!r}, got nothing"
        )
    if target.script and not Path(target.script).is_file():
        raise ScenarioError(
            f"{where}: target.script: expected an existing file, got {_got(target.script)}"
        )
    if target.start_method != "exec" and not target.is_cluster:
        raise ScenarioError(
            f"{where}: target.start_method: expected only for a cluster the lab starts "
            f"(builtin, asgi, wsgi, script), got {_got(target.start_method)} for kind {target.kind!r}"
        )
    _check_readiness(target, where)
    if target.kind == "command" and not any("{port}" in part for part in target.command):
        raise ScenarioError(
            f"{where}: target.command: expected a {{port}} placeholder to serve on, "
            f"got {_got(list(target.command))}"
        )


_IMPORT_APP = """
import importlib, sys
sys.path.insert(0, sys.argv[1])
module, _, attr = sys.argv[2].partition(":")
app = importlib.import_module(module)
for part in attr.split("."):
    app = getattr(app, part)
if not callable(app):
    raise TypeError(f"{sys.argv[2]} is a {type(app).__name__}, not a callable app")
"""


def _check_app_imports(target: Target, where: str) -> None:
    """An asgi/wsgi ``app`` imports as the workers will import it (``app_dir`` first on
    ``sys.path``, this process's working directory and environment), in a child process of its
    own session (writing no bytecode), killed with whatever it started after
    APP_IMPORT_TIMEOUT seconds."""
    if target.kind not in ("asgi", "wsgi") or not target.app:
        return
    timeout = import_timeout()
    child = subprocess.Popen(
        [sys.executable, "-B", "-c", _IMPORT_APP, target.app_dir or ".", target.app],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):  # the child's whole session
            os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        raise ScenarioError(
            f"{where}: target.app: expected an app that imports within {timeout:g} s, "
            f"got {_got(target.app)} still importing"
        ) from None
    if child.returncode != 0:
        lines = [line.strip() for line in err.splitlines() if line.strip()]
        why = lines[-1] if lines else f"the import exited with status {child.returncode}"
        raise ScenarioError(
            f"{where}: target.app: expected an app that imports from {target.app_dir}, "
            f"got {_got(target.app)}: {why}"
        )


_IMPORT_POLICY = """
import sys
from clusterlab.cluster._policies import resolve
resolve(sys.argv[1])
"""


def import_timeout() -> float:
    """APP_IMPORT_TIMEOUT, or the seconds in $CLUSTERLAB_LAB_IMPORT_TIMEOUT when it holds a
    positive number."""
    try:
        seconds = float(os.environ.get(IMPORT_TIMEOUT_ENV, APP_IMPORT_TIMEOUT))
    except ValueError:
        return APP_IMPORT_TIMEOUT
    return seconds if seconds > 0 else APP_IMPORT_TIMEOUT


def _check_policy_imports(sweep: Sweep, where: str) -> None:
    """Each ``"module:Name"`` policy imports (and is a Scheduler) as the target's primary will
    import it: from this working directory, in a child process (imports run code), within
    ``import_timeout()`` seconds."""
    timeout = import_timeout()
    for i, policy in enumerate(sweep.policies):
        if ":" not in policy:
            continue
        try:
            child = subprocess.run(
                [sys.executable, "-B", "-c", _IMPORT_POLICY, policy],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ScenarioError(
                f"{where}: sweep.policies[{i}]: expected a Scheduler that imports within "
                f"{timeout:g} s, got {_got(policy)} still importing"
            ) from None
        if child.returncode != 0:
            lines = [line.strip() for line in child.stderr.splitlines() if line.strip()]
            why = lines[-1] if lines else f"the import exited with status {child.returncode}"
            raise ScenarioError(
                f"{where}: sweep.policies[{i}]: expected a Scheduler that imports from "
                f"{os.getcwd()}, got {_got(policy)}: {why}"
            )


def _check_readiness(target: Target, where: str) -> None:
    """ready_line/ready_count only for commands (a url target prints nothing to the lab);
    pid/pidfile only for url targets (the lab knows the processes it starts)."""
    only = {
        "ready_line": "command",
        "ready_count": "command",
        "pid": "url",
        "pidfile": "url",
        "metrics": "url",
    }
    for name, kind in only.items():
        if getattr(target, name) is not None and target.kind != kind:
            raise ScenarioError(
                f"{where}: target.{name}: expected only with target.kind = {kind!r}, "
                f"got {_got(getattr(target, name))} for kind {target.kind!r}"
            )
    if target.ready_count is not None and target.ready_line is None:
        raise ScenarioError(
            f"{where}: target.ready_count: expected together with target.ready_line, got it alone"
        )
    if target.pid is not None and target.pidfile is not None:
        raise ScenarioError(f"{where}: target.pid: expected pid or pidfile, not both")
    if target.ready_line is not None:
        try:
            re.compile(target.ready_line)
        except re.error as exc:
            raise ScenarioError(
                f"{where}: target.ready_line: expected a regular expression, "
                f"got {_got(target.ready_line)} ({exc})"
            ) from None


#: The built-in policies that key on the client's address (`Scheduler.keys_on_client`; named
#: here so that reading a scenario does not import the cluster): locust spreads its users over
#: 127.0.0.0/8 for them, and wrk, from one address, cannot measure them.
CLIENT_KEYED = frozenset({"hash", "hash-bounded"})


def wrk_refusal(scenario: Scenario) -> str | None:
    """Why wrk cannot measure this scenario faithfully (naming the field), or None."""
    load = scenario.load
    if scenario.remote is not None:
        return "remote: the load runs on remote locust workers"
    if hashed := [p for p in scenario.sweep.policies if p in CLIENT_KEYED]:
        return (
            f"sweep.policies: {hashed[0]!r} keeps each client address on one worker and wrk "
            "connects from a single address (locust spreads its users over 127.0.0.0/8)"
        )
    if scenario.search is not None:
        return "search: the probes use locust's open model (paced arrivals)"
    if scenario.faults:
        return (
            "faults: wrk reports connection, read and timeout errors only as totals, so a "
            "crash's failures cannot be placed in time"
        )
    if load.model == "open":
        return "load.model = 'open': wrk has no paced arrivals (use locust)"
    if load.wait > 0:
        return "load.wait: wrk has no think time between requests (use locust)"
    if load.processes not in (1, "auto"):
        return "load.processes: wrk runs one process (its threads follow the load's CPUs)"
    if not float(load.duration).is_integer():
        return f"load.duration: wrk measures whole seconds, got {load.duration:g}"
    return None


def _remote(table: dict[str, Any] | None, where: str) -> Remote | None:
    """The ``[remote]`` table, its token file relative to the scenario file."""
    if table is None:
        return None
    token_file = str((Path(where).resolve().parent / table["token_file"]).resolve())
    return Remote(**{**table, "token_file": token_file})


def url_host(url: str) -> str:
    """The host of an ``http://HOST[:PORT]/...`` url."""
    return url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]


def _check_addresses(target: Target, network: Network, remote: Remote | None, where: str) -> None:
    """Only loopback unless told: every address the lab loads, scrapes or binds is loopback or
    listed in network.allow."""
    told = " or a host listed in network.allow (the lab uses loopback only unless told)"
    named = [
        ("target.url", target.url, '"http://127.0.0.1:PORT"'),
        ("target.metrics", target.metrics, '"http://127.0.0.1:PORT/metrics" (loopback only)'),
    ]
    for name, url, expected in named:
        if url is not None and not network.allows(url_host(url)):
            raise ScenarioError(f"{where}: {name}: expected {expected}{told}, got {_got(url)}")
    if remote is not None and not network.allows(remote.host):
        raise ScenarioError(
            f'{where}: remote.bind: expected "127.0.0.1:PORT"{told}, got {_got(remote.bind)}'
        )


def _check_remote(remote: Remote | None, load: Load, where: str) -> None:
    """With remote workers the lab runs only the master here: one load process, locust's."""
    if remote is None:
        return
    if load.processes != 1:
        raise ScenarioError(
            f"{where}: load.processes: expected 1 with [remote] (the remote workers run the "
            f"load; the lab runs only their master), got {_got(load.processes)}"
        )
    if not Path(remote.token_file).is_file():
        raise ScenarioError(
            f"{where}: remote.token_file: expected an existing file, got {_got(remote.token_file)}"
        )


def _check_engine(scenario: Scenario) -> None:
    refusal = wrk_refusal(scenario)
    if scenario.load.engine == "wrk" and refusal is not None:
        raise ScenarioError(f"{scenario.path}: load.engine = 'wrk' cannot measure this: {refusal}")


def resolve_workers(count: int | str, parallelism: int) -> int:
    """An absolute count, or ``"<f>x"``: f × available_parallelism(), rounded, at least 1
    (the schema allows only f > 0)."""
    if isinstance(count, int):
        return count
    return max(1, round(float(count[:-1]) * parallelism))


def _check_workers(sweep: Sweep, where: str) -> None:
    """A multiple of available_parallelism() must come to at most MAX_WORKERS on this
    machine, as an absolute count must (the schema checks those)."""
    parallelism = available_parallelism()
    for i, count in enumerate(sweep.workers):
        resolved = resolve_workers(count, parallelism)
        if resolved > MAX_WORKERS:
            raise ScenarioError(
                f"{where}: sweep.workers[{i}]: expected at most {MAX_WORKERS} workers, got "
                f"{_got(count)}, which is {resolved} here (available_parallelism() = "
                f"{parallelism})"
            )


def _check_load(load: Load, where: str) -> None:
    if load.users_levels and load.rate_levels:
        raise ScenarioError(
            f"{where}: load.users: expected a single value when load.rate is a list (one load "
            f"axis at a time), got {_got(list(load.users_levels))}"
        )
    if load.rate_share is not None:
        _check_rate_share(load, where)
    if load.model == "open" and load.rate is None and load.rate_share is None:
        raise ScenarioError(
            f"{where}: load.rate: expected a rate when load.model = 'open', got nothing"
        )
    if load.model == "closed" and load.rate is not None:
        raise ScenarioError(
            f"{where}: load.rate: expected no rate when load.model = 'closed' (use load.wait), "
            f"got {_got(load.rate)}"
        )


def _check_rate_share(load: Load, where: str) -> None:
    """A share of capacity: above 0 and at most 100 %, for the open model only (the probe that
    measures the capacity is closed-model; a share of it paces the points)."""
    share = load.rate_share or 0.0
    got = _got(f"{100 * share:g}%")
    if not 0 < share <= 1:
        raise ScenarioError(
            f"{where}: load.rate: expected a share of capacity above 0% and at most 100%, got {got}"
        )
    if load.model != "open":
        raise ScenarioError(
            f"{where}: load.rate: expected a share of capacity only when load.model = 'open' "
            f"(the closed model has no rate), got {got}"
        )
    if load.users_levels:
        raise ScenarioError(
            f"{where}: load.users: expected a single value when load.rate is a share of "
            f"capacity, got {_got(list(load.users_levels))}"
        )


def _load(table: dict[str, Any]) -> Load:
    """The ``[load]`` table as a Load; a list of users or rates becomes the sweep's levels."""
    values = dict(table)
    users, rate = values["users"], values.get("rate")
    if isinstance(rate, str):
        values.update(rate=None, rate_share=float(rate[:-1]) / 100)
    if isinstance(users, list):
        values.update(users=users[0], users_levels=tuple(users))
    if isinstance(rate, list):
        values.update(rate=float(rate[0]), rate_levels=tuple(float(r) for r in rate))
    return Load(**values)


def _slo(table: dict[str, Any] | None, where: str) -> Slo | None:
    if table is None:
        return None
    try:
        return parse_slo(table)
    except ValueError as exc:
        raise ScenarioError(f"{where}: {exc}") from None


def _check_search(
    search: Search | None, slo: Slo | None, load: Load, data: dict[str, Any], where: str
) -> None:
    """Search mode picks the rates and runs locust's open model: it needs an SLO to score
    probes by, and takes no rates, no load sweep, no wrk and no faults."""
    if search is None:
        return
    if slo is None:
        raise ScenarioError(
            f"{where}: slo: expected a table of bounds (e.g. p99_ms = 50) to search against "
            "when [search] is given, got nothing"
        )
    table = data["load"]
    refusals = {
        "load.rate": ("rate" in table, "no rate (the search picks the rates)", table.get("rate")),
        "load.users": (load.sweeps, "a single value with [search]", table["users"]),
        "load.model": (
            table.get("model", "open") != "open",
            '"open" or nothing (the probes are open-model)',
            table.get("model"),
        ),
        "load.engine": (
            load.engine == "wrk",
            '"locust" or "auto" (the probes are locust\'s open model)',
            load.engine,
        ),
        "faults": ("faults" in data, "no faults with [search]", "a fault table"),
    }
    for name, (refused, expected, got) in refusals.items():
        if refused:
            raise ScenarioError(f"{where}: {name}: expected {expected}, got {_got(got)}")


def _respawn(table: dict[str, Any] | None) -> Respawn | None:
    if table is None:
        return None
    beat = table.get("heartbeat")
    return Respawn(**{**table, "heartbeat": Heartbeat(**beat) if beat else None})


_KIND_ONLY = {
    "code": "exit",
    "hang": "hang",
    "fatal": "exception",
    "factor": "slow",
    "length": "slow",
}
_BACKOFF_ONLY = ("base", "factor", "cap")


def _check_faults(
    tables: list[dict[str, Any]], faults: tuple[Fault, ...], target: Target, load: Load, where: str
) -> None:
    """What the JSON Schema cannot say: one schedule per stream, times inside the measured
    window, options that belong to another kind, faults the target cannot take."""
    if faults:
        _need_cluster("faults", target, where)
    for i, (table, fault) in enumerate(zip(tables, faults, strict=True)):
        at = f"{where}: faults[{i}]"
        if ("every" in table) == ("rate" in table):
            got = "both" if "every" in table else "neither"
            raise ScenarioError(
                f"{at}: expected either every (seconds) or rate (per second), got {got}"
            )
        for name, kind in _KIND_ONLY.items():
            if name in table and fault.kind != kind:
                raise ScenarioError(
                    f"{at}.{name}: expected no {name} unless kind = {kind!r}, got {_got(table[name])}"
                )
        stop = load.duration if fault.stop is None else fault.stop
        if stop > load.duration:
            raise ScenarioError(
                f"{at}.stop: expected at most load.duration ({load.duration:g}), got {_got(stop)}"
            )
        if fault.start is not None and fault.start >= stop:
            raise ScenarioError(
                f"{at}.start: expected less than stop ({stop:g}), got {_got(fault.start)}"
            )
        _check_fault_for_target(fault, target, at)


def _check_fault_workloads(
    faults: tuple[Fault, ...], workloads: tuple[Workload, ...], where: str
) -> None:
    names = [w.name for w in workloads]
    for i, fault in enumerate(faults):
        for k, name in enumerate(fault.workloads):
            if name not in names:
                raise ScenarioError(
                    f"{where}: faults[{i}].workloads[{k}]: expected one of the workloads "
                    f"{', '.join(names)}, got {_got(name)}"
                )


def _need_cluster(name: str, target: Target, where: str) -> None:
    if not target.is_cluster:
        raise ScenarioError(
            f"{where}: {name}: expected a target the lab runs as a cluster (target.kind "
            f"builtin, asgi, wsgi or script), got target.kind = {target.kind!r}"
        )


def _check_fault_for_target(fault: Fault, target: Target, at: str) -> None:
    armed = fault.kind in ("exit", "exception") or (
        fault.kind == "hang" and fault.hang == "handler"
    )
    if target.kind == "script" and armed:
        got = _got(fault.kind) + (' with hang = "handler"' if fault.kind == "hang" else "")
        raise ScenarioError(
            f'{at}.kind: expected "sigkill", "sigterm" or "hang" with hang = "sigstop" for '
            "target.kind = 'script' (the lab cannot arm faults inside your worker script), "
            f"got {got}"
        )
    if target.kind == "wsgi" and fault.kind == "hang" and fault.hang == "handler":
        raise ScenarioError(
            f"{at}.hang: expected \"sigstop\" for target.kind = 'wsgi' (a stuck handler blocks "
            'one of waitress\'s threads, which no heartbeat sees), got "handler"'
        )


def _check_respawn(
    table: dict[str, Any], respawn: Respawn | None, target: Target, where: str
) -> None:
    if respawn is None:
        return
    _need_cluster("respawn", target, where)
    if respawn.policy != "backoff":
        for name in _BACKOFF_ONLY:
            if name in table:
                raise ScenarioError(
                    f"{where}: respawn.{name}: expected no {name} unless policy = 'backoff', "
                    f"got {_got(table[name])}"
                )
    if "cap" in table and respawn.cap < respawn.base:
        raise ScenarioError(
            f"{where}: respawn.cap: expected at least respawn.base ({respawn.base:g}), "
            f"got {_got(respawn.cap)}"
        )
    beat = respawn.heartbeat
    if beat is not None and beat.timeout <= beat.interval:
        raise ScenarioError(
            f"{where}: respawn.heartbeat.timeout: expected more than respawn.heartbeat.interval "
            f"({beat.interval:g}), got {_got(beat.timeout)}"
        )


def _field(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).replace("_", "").isalnum():
            out += f".{part}" if out else str(part)
        else:
            out += f".{json.dumps(part)}" if out else json.dumps(part)
    return out


def _got(value: Any) -> str:
    if isinstance(value, dict):
        return "a table" if value else "an empty table"
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _with_tuples(table: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    return {k: tuple(v) if k in keys else v for k, v in table.items()}


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
