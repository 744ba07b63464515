"""``python -m bench run [--quick|--smoke] [--out FILE] [--write-docs]``, ``executor`` or
``report FILE``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import sys
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

from . import comparator, executor, report
from .backends import PROFILES
from .faults import FAULTS
from .load import LoadError
from .runner import MODES, run
from .tables_resources import capacity_markdown
from .targets import REPO, TARGETS, StartError


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C, so every context manager stops its processes.
    raise KeyboardInterrupt(f"signal {signum}")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _write_docs(doc: dict[str, Any], md: str) -> None:
    report.write_docs(md)
    _log(f"rewrote the results section of {report.DOCS}")
    capacity = capacity_markdown(doc)
    if not capacity:
        return
    warning = report.write_capacity_docs(capacity)
    _log(f"warning: {warning}" if warning else f"rewrote the capacity in {report.SCALE_OUT_DOCS}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark shadowproxy side by side with direct access and nginx.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="measure every target side by side in one run")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="3 rounds of 2 s (under 2 minutes)")
    mode.add_argument("--smoke", action="store_true", help="1 round of 1 s: the harness works")
    p.add_argument("--out", type=Path, help="JSON file (default bench/results/MODE-DATE.json)")
    p.add_argument(
        "--write-docs",
        action="store_true",
        help="rewrite the results section of docs/benchmarks.md",
    )
    p.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated subset of: {', '.join(TARGETS)}",
    )
    p.add_argument(
        "--profile",
        choices=list(PROFILES),
        default="nginx",
        help="backends: " + "; ".join(f"{k}: {v}" for k, v in PROFILES.items()),
    )
    p.add_argument(
        "--faults",
        default=",".join(FAULTS),
        help=f"faulty candidates of the isolation runs ('none' for none): {', '.join(FAULTS)}",
    )
    p.add_argument("--rounds", type=int, help="override the mode's number of rounds")
    p.add_argument("--duration", type=int, help="override the mode's wrk seconds per run")
    p.add_argument(
        "--skip-executor", action="store_true", help="leave out the executor batching section"
    )
    p.add_argument(
        "--skip-comparator", action="store_true", help="leave out the comparator's cost per pair"
    )
    p.add_argument(
        "--skip-memory", action="store_true", help="leave out the memory growth measurement"
    )
    p.add_argument("--keep", action="store_true", help="keep the configs and logs of the run")
    p.add_argument(
        "--allow-deep-idle",
        action="store_true",
        help="do not hold /dev/cpu_dma_latency at 0 during latency runs (1-conn, open loop)",
    )
    ep = sub.add_parser("executor", help="the process executor's throughput with batching")
    executor.add_arguments(ep)
    cp = sub.add_parser("comparator", help="what comparing one pair costs")
    cp.add_argument("--pairs", type=int, default=20_000)
    rp = sub.add_parser("report", help="print the tables of an earlier run's JSON")
    rp.add_argument("json", type=Path)
    rp.add_argument(
        "--write-docs",
        action="store_true",
        help="also rewrite docs/benchmarks.md (and the capacity in docs/scale-out.md)",
    )
    args = parser.parse_args(argv)
    if args.command == "executor":
        signal.signal(signal.SIGTERM, _terminate)
        return executor.main(args)
    if args.command == "comparator":
        return comparator.main(["--pairs", str(args.pairs)])
    if args.command == "report":
        doc = json.loads(args.json.read_text())
        md = report.markdown(doc)
        print(md)
        if args.write_docs:
            _write_docs(doc, md)
        return 0

    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    names = [n for n in TARGETS if n in names]  # canonical order
    faults = [f.strip() for f in args.faults.split(",") if f.strip() and f.strip() != "none"]
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        parser.error(f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(FAULTS)}")
    settings = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    settings = replace(
        settings,
        rounds=args.rounds or settings.rounds,
        wrk_duration_s=args.duration or settings.wrk_duration_s,
        idle_qos=not args.allow_deep_idle,
        executor=not args.skip_executor,
        profile=args.profile,
        faults=tuple(f for f in FAULTS if f in faults),
        comparator_pairs=0 if args.skip_comparator else settings.comparator_pairs,
        memory_requests=None if args.skip_memory else settings.memory_requests,
    )

    signal.signal(signal.SIGTERM, _terminate)
    try:
        raw = run(settings, names, log=_log, keep_workdir=args.keep)
    except (LoadError, StartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; every process was stopped", file=sys.stderr)
        return 130
    doc = report.build(raw)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or REPO / "bench" / "results" / f"{settings.mode}-{stamp}.json"
    report.write_json(doc, out)
    md = report.markdown(doc)
    print(md)
    print(f"JSON: {out}", file=sys.stderr)
    if args.write_docs:
        _write_docs(doc, md)
    faulty = doc["isolation"]["targets"]
    failed = [n for n, t in {**doc["targets"], **faulty}.items() if t["error"] or not t["rounds"]]
    for section in ("executor", "comparator", "memory"):
        if doc[section] is not None and not doc[section]["rounds"]:
            failed.append(section)
    if failed:
        print(f"not fully measured: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
