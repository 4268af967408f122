"""Waiting on a lab target's events, for the tests that drive a ClusterTarget directly."""

import time

from clusterlab.lab.running.targets import ClusterTarget


def wait_for(target: ClusterTarget, predicate, timeout=15.0) -> dict:
    """The first event of ``target`` that ``predicate`` accepts, within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in target.events():
            if predicate(event):
                return event
        time.sleep(0.02)
    raise AssertionError(f"no such event; got {[e['event'] for e in target.events()]}")
