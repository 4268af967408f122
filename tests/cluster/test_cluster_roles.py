"""Roles: is_primary / is_worker / is_master, and the worker-id environment variable."""

import pytest

pytestmark = pytest.mark.timeout(30)


def test_plain_process_is_primary(run_primary):
    r = run_primary("""
        out("roles", is_primary=cluster.is_primary, is_worker=cluster.is_worker,
            is_master=cluster.is_master, workers=cluster.workers == {},
            worker=getattr(cluster, "worker", None) is None)
    """).check()
    rec = r.one("roles")
    assert rec["is_primary"] is True
    assert rec["is_worker"] is False
    assert rec["is_master"] is True
    assert rec["workers"] is True, "cluster.workers is an empty dict in a primary before fork"
    # Node: cluster.worker is not available in the primary.
    assert rec["worker"] is True


def test_forked_process_is_worker(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            cluster.fork()
        else:
            out("roles", is_primary=cluster.is_primary, is_worker=cluster.is_worker,
                is_master=cluster.is_master, workers_is_none=cluster.workers is None,
                worker_id=cluster.worker.id, worker_pid=cluster.worker.process.pid)
            cluster.worker.disconnect()
    """).check()
    rec = r.one("roles")
    assert rec["is_primary"] is False
    assert rec["is_worker"] is True
    assert rec["is_master"] is False
    assert rec["workers_is_none"] is True, "cluster.workers is None in a worker"
    assert rec["worker_id"] == 1
    assert rec["worker_pid"] == rec["pid"]


def test_worker_id_variable_removed_from_worker_environment(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            before = {k for k in os.environ}
            out("primary_env", keys=sorted(before))
            cluster.fork()
        else:
            out("worker_env", env=dict(os.environ))
            cluster.worker.disconnect()
    """).check()
    primary_keys = set(r.one("primary_env")["keys"])
    worker_env = r.one("worker_env")["env"]
    # Whatever variables the primary used to set the worker up are gone by the time user code
    # runs (test-cluster-basic: NODE_UNIQUE_ID is gone; Node also deletes NODE_CHANNEL_FD).
    added = {
        k: v
        for k, v in worker_env.items()
        if k not in primary_keys and k.upper().startswith("CLUSTERLAB")
    }
    assert added == {}, f"worker environment still carries cluster variables: {added}"
    assert "CLUSTERLAB_WORKER_ID" not in worker_env


def test_grandchild_of_worker_is_a_primary(run_primary):
    r = run_primary("""
        import subprocess
        if cluster.is_primary:
            cluster.fork()
        else:
            child = subprocess.run(
                [sys.executable, "-c",
                 "from clusterlab import cluster; print(cluster.is_primary, cluster.is_worker)"],
                capture_output=True, text=True, timeout=15)
            out("grandchild", stdout=child.stdout.strip(), rc=child.returncode,
                stderr=child.stderr[-2000:])
            cluster.worker.disconnect()
    """).check()
    rec = r.one("grandchild")
    assert rec["rc"] == 0, rec["stderr"]
    assert rec["stdout"] == "True False"
