"""RestartPolicy and HeartbeatPolicy in isolation: delays, jitter bounds, validation."""

import random

import pytest

from clusterlab.supervisor import (
    HeartbeatPolicy,
    RestartPolicy,
    Supervisor,
    is_control_message,
)


def test_backoff_bounds_grow_geometrically_up_to_the_cap():
    p = RestartPolicy.backoff(base=0.1, factor=2, cap=1.0)
    assert [p.bound(n) for n in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert p.bound(10_000) == 1.0  # no overflow


def test_full_jitter_stays_within_bounds_and_is_seedable():
    p = RestartPolicy.backoff(base=0.1, factor=2, cap=1.0, seed=7)
    a = [p.delay(n, random.Random(p.seed)) for n in range(8)]
    b = [p.delay(n, random.Random(p.seed)) for n in range(8)]
    assert a == b
    for n, d in enumerate(a):
        assert 0 <= d <= p.bound(n)
    rng = random.Random(1)
    samples = [p.delay(3, rng) for _ in range(2000)]
    assert min(samples) < 0.1 and max(samples) > 0.7  # spread over [0, 0.8]


def test_no_jitter_and_immediate_and_never():
    assert RestartPolicy.backoff(base=0.5, jitter=False).delay(1, random.Random()) == 1.0
    assert RestartPolicy.immediate().delay(5, random.Random()) == 0.0
    never = RestartPolicy.never()
    assert never.mode == "never" and never.max_restarts is None


@pytest.mark.parametrize(
    "kw",
    [
        {"mode": "sometimes"},
        {"base": -1},
        {"factor": 0.5},
        {"cap": float("nan")},
        {"max_restarts": -1},
        {"within": -2},
    ],
)
def test_restart_policy_rejects_bad_values(kw):
    with pytest.raises(ValueError):
        RestartPolicy(**kw)


def test_heartbeat_policy_needs_timeout_above_interval():
    HeartbeatPolicy(interval=0.5, timeout=2)
    with pytest.raises(ValueError):
        HeartbeatPolicy(interval=1, timeout=1)


def test_supervisor_rejects_bad_arguments():
    for kw in ({"workers": 0}, {"ready": "soon"}, {"on_limit": "panic"}, {"grace": -1}):
        with pytest.raises(ValueError):
            Supervisor(**kw)


def test_control_messages_are_recognised_exactly():
    assert is_control_message({"__clusterlab_supervisor__": "heartbeat"})
    assert not is_control_message({"__clusterlab_supervisor__": "x", "other": 1})
    assert not is_control_message("heartbeat")
