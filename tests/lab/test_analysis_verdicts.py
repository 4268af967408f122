"""The generator-bound verdict, from the CPU each side used (``analysis.verdicts``)."""

from clusterlab.lab.analysis.verdicts import generator_bound, point_generator_bound


def test_a_locust_process_near_a_full_core_is_generator_bound():
    bound, reason = generator_bound(97.0, 97.0, 40.0, 70.0, limit=85.0)
    assert bound and "97%" in reason


def test_a_saturated_machine_where_locust_outspends_the_cluster_is_generator_bound():
    assert generator_bound(70.0, 70.0, 60.0, 95.0, limit=85.0)[0]


def test_a_cpu_bound_cluster_is_not_generator_bound():
    assert not generator_bound(40.0, 40.0, 150.0, 95.0, limit=85.0)[0]
    assert not generator_bound(60.0, 60.0, 20.0, 50.0, limit=85.0)[0]


def test_a_results_row_is_judged_from_its_own_cpu_columns():
    row = {
        "status": "ok",
        "gen_cpu_max_pct": 97.0,
        "gen_cpu_pct": 97.0,
        "workers_cpu_pct": 40.0,
        "primary_cpu_pct": float("nan"),
        "machine_cpu_pct": 70.0,
    }
    assert point_generator_bound(row, limit=85.0) == (
        True,
        "a locust process used 97% of a core (limit 85%)",
    )
    assert point_generator_bound({**row, "gen_cpu_max_pct": 80.0}, limit=85.0)[0] is False
    assert point_generator_bound({**row, "status": "failed"}, limit=1.0) == (False, "")
