"""What the lab's processes say to each other, in one place: the runner's commands to the target's
primary and the events it answers with (JSON lines on its stdin/stdout), the messages between
that primary and its workers (over the cluster's channel), and the event names of events.csv.

Every name is a ``StrEnum`` member, so it is written to JSON and CSV as its plain string and
compares equal to it when read back.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, TypedDict


class Command(StrEnum):
    """The runner → the target's primary (``{"cmd": …}``)."""

    SNAPSHOT = "snapshot"  # every live worker's counts now; answered by Event.SNAPSHOT
    SUPERVISION = "supervision"  # RR hand-off counters and supervisor totals
    FAULT = "fault"  # inject one planned fault
    STOP = "stop"  # disconnect the workers and exit


class Event(StrEnum):
    """The target's primary → the runner (``{"event": …, "t": …}``), and events.csv's names."""

    # the cluster's own events
    ONLINE = "online"
    LISTENING = "listening"
    READY = "ready"  # every worker listens: the target can be loaded
    COUNTS = "counts"  # one worker's cumulative requests and connections
    # the supervisor's events
    FORK = "fork"
    EXIT = "exit"
    RESTART_SCHEDULED = "restart_scheduled"
    RESTART_LIMIT = "restart_limit"
    RESTART_REFUSED = "restart_refused"
    HANG_DETECTED = "hang_detected"
    SUPERVISOR_STOPPED = "supervisor_stopped"
    # faults
    FAULT = "fault"  # a fault took effect (a signal) or was armed in a worker
    FAULT_FIRED = "fault_fired"  # an armed fault fired at a request
    FAULT_SKIPPED = "fault_skipped"  # no worker could take it, or the load had ended
    FAULT_END = "fault_end"  # a fault with a length (slow) is over: the worker is itself again
    # answers and the end
    SNAPSHOT = "snapshot"
    SUPERVISION = "supervision"
    ERROR = "error"
    STOPPED = "stopped"
    # written by the runner itself into events.csv: a process it started
    TARGET_STARTED = "target"
    LOAD_STARTED = "load"


#: Answers the runner waits for; they are not kept in events.csv.
ANSWERS = frozenset({Event.COUNTS, Event.SNAPSHOT, Event.SUPERVISION})
#: The control stream's end, as the runner's reader reports it (not sent by the target).
CLOSED = "closed"

#: The key of the lab's messages on the cluster channel, whose value is a ``WorkerMessage``.
MESSAGE_KEY = "clusterlab.lab"


class WorkerMessage(StrEnum):
    """Between the target's primary and its workers (``{MESSAGE_KEY: …}``)."""

    COUNTS = "counts"  # worker → primary: its cumulative counts
    REPORT = "report"  # primary → worker: send your counts now
    FAULT = "fault"  # primary → worker: arm (or, for exit, act on) a fault
    FAULT_FIRED = "fault_fired"  # worker → primary: an armed fault fired
    START_FAILED = "start_failed"  # worker → primary (serve): why it could not serve, one line


class Counts(TypedDict):
    """A worker's cumulative counts at ``t`` (the worker's clock)."""

    requests: int
    connections: int
    t: float


class FaultCommand(TypedDict):
    """The runner's ``fault`` command: a planned fault for the primary to carry out."""

    cmd: str
    id: int
    stream: int
    kind: str
    target: str
    draw: float
    code: int | None
    hang: str | None
    fatal: bool | None
    factor: float | None
    length: float | None


class Supervision(TypedDict):
    """The answer to ``supervision``: RR hand-off counters (None unless rr) and totals."""

    rr: dict[str, int] | None
    stats: dict[str, Any] | None


#: The latency histograms locust processes write: 1 µs to an hour, 3 significant digits.
HISTOGRAM_RANGE_US = (1, 3600 * 1_000_000, 3)

#: The runner → locust: a point's load configuration, as JSON in this environment variable.
LOAD_CONFIG_ENV = "CLUSTERLAB_LAB_LOAD"


#: The runner → the local locust processes of a point: the token its workers present.
LOAD_TOKEN_ENV = "CLUSTERLAB_LAB_TOKEN"
#: ``clusterlab loadgen`` → each locust worker it starts: who started it (JSON: ``loadgen``,
#: ``slot``, and ``replaces``, the previous worker of that slot and how it ended).
LOADGEN_ENV = "CLUSTERLAB_LOADGEN"


class LoadMessage(StrEnum):
    """locust's custom messages between the lab's locust master and its workers."""

    HELLO = "clusterlab_hello"  # worker → master, first: the token, and who it is
    CONFIG = "clusterlab_config"  # master → worker: the point's load, at the point's start
    MEASURE = "clusterlab_measure"  # master → worker: the window starts now
    STOP = "clusterlab_stop"  # master → worker: the window ends now
    RESULTS = "clusterlab_results"  # worker → master: tally, bins, histograms, CPU, late answers


class LoadFile(StrEnum):
    """Files the locustfile writes into a point's raw folder for the runner to read. Tallies,
    bins and histograms are written by the process that gathered them: a lone locust, or the
    master from its workers' results messages ({pid} is the writer's)."""

    MEASURING = "measuring.json"  # the measured window's start (the fault injector waits for it)
    PHASES = "phases.json"  # start, measure_start and stop times
    TALLY = "tally-{pid}.json"  # responses by worker header
    OUTCOMES = "outcomes-{pid}.json"  # outcomes in 100 ms bins
    HISTOGRAM = "latency-{pid}.hdr"  # the window's HDR latency histogram
    OPEN = "open-{pid}.json"  # open model: late arrivals, latency from the send
    TOTALS = "totals.json"  # the window's counts and failures, less answers after its stop
    WORKERS = "load-workers.json"  # a master: each worker, its CPU, and those lost mid-window
    ERROR = "load-error.json"  # a master that gave up before the point: the one-line reason

    def of(self, pid: int) -> str:
        """This per-process file's name for process ``pid``."""
        return self.value.format(pid=pid)

    @property
    def pattern(self) -> str:
        """A glob matching this file of every process."""
        return self.value.format(pid="*")
