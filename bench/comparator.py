"""``python -m bench comparator``: what comparing a pair costs.

Synthetic pair records (one production and one candidate v2 answer each, one row, seeded)
are folded by a real :class:`~shadowproxy.compare.comparator.Comparator`, as its thread does
in the proxy. Reported: the comparator thread's CPU per pair (parsing both answers and
updating every statistic), and what the event loop pays to hand a record over (one
append to the bounded inbox); ``us_per_pair`` is the two together. The goal is
2 µs per pair amortised; see docs/benchmarks.md for how far the Python implementation is
from it and why. ``bench run`` runs this in every round, pinned to the proxy's CPU.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import orjson

from shadowproxy.compare.comparator import Comparator
from shadowproxy.config import config_from_dict
from shadowproxy.pairing.record import Cost, Exchange, PairRecord

from .load import PROXY_CPU, LoadError
from .procs import run_module_pinned

GOAL_US = 2.0


def _answer(p1: float) -> bytes:
    return orjson.dumps(
        {"outputs": [
            {"name": "label", "shape": [1], "datatype": "INT64", "data": [int(p1 >= 0.5)]},
            {"name": "probabilities", "shape": [1, 2], "datatype": "FP32", "data": [1 - p1, p1]},
        ]}
    )  # fmt: skip


def records(n: int, seed: int = 0) -> list[PairRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for i, p in enumerate(rng.uniform(0.02, 0.98, n).tolist()):
        c = float(np.clip(p + rng.normal(0, 0.01), 0, 1))
        prod = Exchange(
            "production",
            "prod",
            "1",
            "ok",
            200,
            0.010,
            _answer(p),
            cost=Cost(cpu_s=0.001, rss_bytes=1e8, threads=4, child_processes=0),
        )
        cand = Exchange(
            "candidate",
            "cand",
            "2",
            "ok",
            200,
            0.012,
            _answer(c),
            cost=Cost(cpu_s=0.002, rss_bytes=2e8, threads=2, child_processes=0),
        )
        out.append(PairRecord(f"r{i}", 0.0, "POST", "/v2/models/m/infer", b"{}", "", prod,
                              {"cand": cand}))  # fmt: skip
    return out


def measure(n: int) -> dict[str, float]:
    config = config_from_dict(
        {
            "production": {"name": "prod", "url": "http://127.0.0.1:9"},
            "compare": {"outputs": {"score": "probabilities", "label": "label"}},
        }
    )
    recs = records(n)
    comparator = Comparator(config, queue_size=n + 1)
    started = time.process_time_ns()
    for record in recs:
        comparator.submit(record)
    handoff = (time.process_time_ns() - started) / n / 1000
    started = time.process_time_ns()
    while batch := comparator.queue.take(256, 0.0):
        for record in batch:
            comparator.update(record)  # type: ignore[arg-type]
    fold = (time.process_time_ns() - started) / n / 1000
    # What one pair costs the proxy process in all: the hand-over plus the fold.
    return {"pairs": n, "handoff_us_per_pair": handoff, "fold_us_per_pair": fold,
            "us_per_pair": handoff + fold, "pairs_per_s": 1e6 / fold,
            "goal_us": GOAL_US}  # fmt: skip


def run_pinned(pairs: int, *, cpu: int = PROXY_CPU, timeout_s: float = 120) -> dict[str, float]:
    """``python -m bench comparator`` in a child pinned to ``cpu`` (for ``bench run``)."""
    args = ["bench", "comparator", f"--pairs={pairs}"]
    stdout = run_module_pinned(args, cpu=cpu, timeout_s=timeout_s, what="the comparator bench")
    try:
        result: dict[str, float] = json.loads(stdout)
    except ValueError as exc:
        raise LoadError(f"cannot parse the comparator bench's result: {stdout!r}") from exc
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench comparator")
    parser.add_argument("--pairs", type=int, default=20_000)
    args = parser.parse_args(argv)
    result = measure(args.pairs)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
