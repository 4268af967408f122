"""Does the lab's capacity search find the capacity it should? Against the builtin ``/cpu?ms=X``
with 1 worker, every figure measured in this script:

1. the per-request overhead: 1 worker saturated with ``/cpu?ms=0`` (the native load engine,
   closed model; target-bound or the check says so) gives overhead = 1000 / its req/s;
2. the expected capacity, 1000 / (X + overhead) req/s, against the search's maximum within
   ``p99 ≤ SLO`` (``[search]``: ramp, bisection to 5 %, confirmed): within 20 %;
3. that maximum re-run as an open-model point, measured as a probe is (on a fresh target),
   meets the SLO, and at +15 % misses it.

4. two independent sweeps of 1–4 workers (wrk, closed model, 2 repeats): their USL intervals
   on λ, σ and κ overlap.

Probes and re-runs are ``--min-requests`` long (3,000 by default, more than the 1,000 a search
needs at least): near saturation a queue takes seconds to settle and a p99 of 1,000 requests
rests on 10, so shorter windows move the edge by more than the bisection's 5 %.

Run it under the shared lock (it loads the machine for about 7 minutes on 2 cores):

    flock /tmp/clusterlab-load.lock .venv/bin/python tools/check_capacity.py --out /tmp/capcheck

Prints one line per check; exit 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import math
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clusterlab.lab.analysis.capacity import probe_met  # noqa: E402
from clusterlab.lab.analysis.usl import Interval  # noqa: E402
from clusterlab.lab.config.scenario import parse_scenario  # noqa: E402
from clusterlab.lab.pipeline import LabRun, run_lab  # noqa: E402
from clusterlab.lab.running.progress import ConsoleProgress  # noqa: E402

TARGET = '[target]\nkind = "builtin"\n'
TOLERANCE = 0.20
ABOVE = 1.15


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


def _run(text: str, name: str, out: Path, quiet: bool) -> LabRun:
    scenario = parse_scenario(tomllib.loads(text), f"{name}.toml", default_name=name)
    return run_lab(scenario, out / name, ConsoleProgress(quiet=quiet))


def measure_overhead(out: Path, quiet: bool) -> tuple[float, str]:
    """(overhead ms per request, the point's verdict) from 1 worker saturated on /cpu?ms=0."""
    text = TARGET + (
        '[sweep]\nworkers = [1]\n[workloads]\nzero = { "/cpu?ms=0" = 1 }\n'
        '[load]\nusers = 16\nwarmup = 1\nduration = 4\nengine = "auto"\n'
    )
    point = _run(text, "overhead", out, quiet).analysis.measured.iloc[0]
    return 1000.0 / float(point["rps"]), str(point["verdict"])


def search_max(
    ms: float, slo_ms: float, start: float, requests: int, out: Path, quiet: bool
) -> LabRun:
    text = TARGET + (
        f'[sweep]\nworkers = [1]\n[workloads]\ncpu = {{ "/cpu?ms={ms:g}" = 1 }}\n'
        "[load]\nusers = 4\nwarmup = 1\nduration = 3\n"
        f"[slo]\np99_ms = {slo_ms:g}\n"
        f"[search]\nstart = {start:.0f}\nprecision = 0.05\nmax_probes = 12\n"
        f"min_requests = {requests}\n"
    )
    return _run(text, "search", out, quiet)


def verify(ms: float, slo_ms: float, rate: float, requests: int, out: Path, quiet: bool) -> LabRun:
    """The maximum and +15 % as open-model points measured as the search's probes were (3 s,
    or long enough for ``requests``), one target."""
    duration = max(3.0, math.ceil(requests / rate))
    text = TARGET + (
        f'[sweep]\nworkers = [1]\n[workloads]\ncpu = {{ "/cpu?ms={ms:g}" = 1 }}\n'
        f'[load]\nusers = 4\nmodel = "open"\nrate = [{rate:.1f}, {rate * ABOVE:.1f}]\n'
        f"warmup = 1\nduration = {duration:g}\n[slo]\np99_ms = {slo_ms:g}\n"
    )
    return _run(text, "verify", out, quiet)


def sweep(ms: float, name: str, out: Path, quiet: bool) -> LabRun:
    text = TARGET + (
        f'[sweep]\nworkers = [1, 2, 3, 4]\nrepeats = 2\n[workloads]\ncpu = {{ "/cpu?ms={ms:g}" = 1 }}\n'
        '[load]\nusers = 16\nwarmup = 1\nduration = 3\nengine = "auto"\n'
    )
    return _run(text, name, out, quiet)


def _overlap(a: Interval | None, b: Interval | None) -> bool:
    if a is None or b is None or any(math.isnan(v) for v in (a.low, a.high, b.low, b.high)):
        return False
    return a.low <= b.high and b.low <= a.high


def usl_checks(one: LabRun, two: LabRun) -> list[Check]:
    fits = []
    for run in (one, two):
        found = run.analysis.capacity.usl if run.analysis.capacity else []
        fits.append(next((f for f in found if f.policy == "rr"), None))
    first, second = fits
    if first is None or second is None or first.lam is None or second.lam is None:
        why = [f.refused if f else "no target-bound points" for f in fits]
        return [Check("USL intervals of two runs overlap", False, f"no fit: {why}")]
    out = []
    for name in ("lam", "sigma", "kappa"):
        a, b = getattr(first, name), getattr(second, name)
        out.append(
            Check(
                f"USL {name} intervals of two runs overlap",
                _overlap(a, b),
                f"[{a.low:.4g}, {a.high:.4g}] and [{b.low:.4g}, {b.high:.4g}] "
                f"(verdicts: {first.verdict}; {second.verdict})",
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs (new)")
    parser.add_argument("--ms", type=float, default=5.0, help="CPU ms per request (default 5)")
    parser.add_argument("--slo", type=float, default=50.0, help="p99 bound in ms (default 50)")
    parser.add_argument(
        "--min-requests", type=int, default=3000, help="requests per probe (default 3000)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=False)
    checks = run_checks(args.ms, args.slo, args.min_requests, args.out, args.quiet)
    for check in checks:
        print(f"{'PASS' if check.passed else 'FAIL'}  {check.name}: {check.detail}")
    return 0 if all(c.passed for c in checks) else 1


def run_checks(ms: float, slo_ms: float, requests: int, out: Path, quiet: bool) -> list[Check]:
    overhead, verdict = measure_overhead(out, quiet)
    expected = 1000.0 / (ms + overhead)
    checks = [
        Check(
            "overhead measured on a target-bound point",
            verdict == "target",
            f"{overhead:.3f} ms per request ({verdict}); expected capacity "
            f"1000 / ({ms:g} + {overhead:.3f}) = {expected:.0f} req/s",
        )
    ]
    found = search_max(ms, slo_ms, expected / 4, requests, out, quiet).analysis.capacity
    table = found.table if found else None
    best = float(table["met"].max()) if table is not None and not table.empty else math.nan
    error = best / expected - 1
    checks.append(
        Check(
            f"search maximum within {TOLERANCE:.0%} of the expected capacity",
            abs(error) <= TOLERANCE,
            f"{best:.0f} req/s within p99 ≤ {slo_ms:g} ms, {error:+.1%} from {expected:.0f}",
        )
    )
    if math.isnan(best):
        return checks
    checks += _verify_checks(verify(ms, slo_ms, best, requests, out, quiet), best, found)
    checks += usl_checks(sweep(ms, "sweep-a", out, quiet), sweep(ms, "sweep-b", out, quiet))
    return checks


def _verify_checks(run: LabRun, best: float, found: Any) -> list[Check]:
    rows = run.analysis.measured.sort_values("offered_rps").to_dict("records")
    slo = found.slo
    out = []
    for row, wanted, label in ((rows[0], True, "meets"), (rows[-1], False, "misses")):
        met = probe_met(row, slo)
        out.append(
            Check(
                f"an open-model point at {row['offered_rps']:.0f} req/s {label} the SLO",
                met == wanted,
                f"p99 {row['p99_ms']:.1f} ms, {row['rps']:.0f} req/s delivered, "
                f"verdict {row['verdict']}",
            )
        )
    return out


if __name__ == "__main__":
    sys.exit(main())
