"""`clusterlab_hello.py` with the primary's /metrics served (127.0.0.1, a free port): the
`make bench` row that measures the RR hand-off with metrics on (docs/metrics.md).

    python bench/clusterlab_hello_metrics.py --workers 2 --port 8000 --policy rr
"""

from __future__ import annotations

import clusterlab_hello  # type: ignore[import-not-found]  # beside this file

from clusterlab import cluster

if __name__ == "__main__":
    if cluster._primary is not None:
        # Not setup_primary(metrics=): clusterlab_hello sets the scheduling policy after this,
        # and setup_primary freezes it (as Node's setupPrimary does).
        cluster._primary.serve_metrics("127.0.0.1:0")
        print(f"metrics on {cluster._primary.metrics.url}", flush=True)  # type: ignore[union-attr]
    clusterlab_hello.main()
