"""The comparator on synthetic pair records: folding, merging, persistence, calibration."""

from __future__ import annotations

import copy
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from shadowproxy.background import BACKGROUND_NICE
from shadowproxy.compare.comparator import (
    Comparator,
    merge_snapshots,
    reservoir_key_from,
    truth_labels,
)
from shadowproxy.compare.decide import report_for
from shadowproxy.compare.persist import read_snapshot_file, write_snapshot
from shadowproxy.compare.reservoir import key_id
from shadowproxy.config import config_from_dict
from shadowproxy.config.model import Config
from shadowproxy.errors import StateError
from shadowproxy.pairing.record import Cost, Exchange, PairRecord
from shadowproxy.protocols.arrays import labels_array
from shadowproxy.shadow.sampling import MIRROR_PURPOSE, is_sampled, keyed_salt


def config(agreement: float = 0.98, **promotion: Any) -> Config:
    return config_from_dict(
        {
            "production": {"name": "prod", "version": "1", "url": "http://127.0.0.1:9"},
            "candidates": [{"name": "cand", "version": "2", "url": "http://127.0.0.1:10"}],
            "compare": {"outputs": {"score": "probabilities", "label": "label"}, "seed": 7},
            "promotion": {
                "min_samples": 200,
                "gates": [
                    {"metric": "label_agreement", "min": agreement},
                    {"metric": "score_mae", "max": 0.05},
                ],
                **promotion,
            },
        }
    )


def v2_answer(p1: float) -> bytes:
    return orjson.dumps(
        {"outputs": [
            {"name": "label", "shape": [1], "datatype": "INT64", "data": [int(p1 >= 0.5)]},
            {"name": "probabilities", "shape": [1, 2], "datatype": "FP32",
             "data": [1 - p1, p1]},
        ]}
    )  # fmt: skip


def record(i: int, p_score: float, c_score: float, outcome: str = "ok") -> PairRecord:
    prod = Exchange(
        "production", "prod", "1", "ok", 200, 0.010, v2_answer(p_score),
        cost=Cost(cpu_s=0.001, rss_bytes=100e6, threads=4, child_processes=0),
    )  # fmt: skip
    cand = Exchange(
        "candidate", "cand", "2", outcome, 200 if outcome == "ok" else None, 0.012,
        v2_answer(c_score) if outcome == "ok" else b"",
        cost=Cost(cpu_s=0.002, rss_bytes=150e6, threads=2, child_processes=0),
    )  # fmt: skip
    return PairRecord(
        f"req-{i}", 0.0, "POST", "/v2/models/m/infer", b"{}", "", prod, {"cand": cand}
    )


def records(
    n: int, seed: int, shift: float = 0.0, flip: float = 0.0, noise: float = 0.002
) -> list[PairRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = float(rng.uniform(0.02, 0.98))
        c = float(np.clip(p + shift + rng.normal(0, noise), 0, 1))
        if rng.random() < flip:
            c = 1 - p
        out.append(record(seed * 1_000_000 + i, p, c))
    return out


def fold(cfg: Config, recs: list[PairRecord]) -> Comparator:
    comparator = Comparator(cfg)
    for r in recs:
        comparator.update(r)
    comparator.flush()  # what the comparator thread does after each micro-batch
    return comparator


def test_a_record_is_folded_into_counts_divergence_and_costs() -> None:
    comparator = fold(
        config(), [record(1, 0.8, 0.7), record(2, 0.3, 0.6), record(3, 0.5, 0.5, "timeout")]
    )
    st = comparator.targets["cand"]
    assert st.requests == 3 and st.compared == 2
    assert st.candidate_outcomes["timeout"] == 1
    assert st.agree == 1 and st.label_rows == 2  # 0.3 -> 0.6 flips the label
    assert st.abs_diff.mean == pytest.approx((0.1 + 0.3) / 2, abs=1e-6)
    assert st.diff.mean == pytest.approx((-0.1 + 0.3) / 2, abs=1e-6)
    assert st.candidate_cpu_ms.mean == pytest.approx(2.0)
    assert st.examples[0].request_id == "req-2"  # the most divergent first


def test_merging_two_replicas_equals_one_process_that_saw_everything() -> None:
    cfg = config()
    all_records = records(400, seed=1)
    whole = fold(cfg, all_records).snapshot()
    left = fold(cfg, all_records[::2]).snapshot()
    right = fold(cfg, all_records[1::2]).snapshot()
    merged = merge_snapshots([("a", left), ("b", right)])
    expected = merge_snapshots([("whole", whole)])
    a, b = merged["cand"].to_json(), expected["cand"].to_json()
    for key in ("requests", "compared", "agree", "flips", "candidate_outcomes", "production_hist",
                "candidate_hist", "abs_hist", "abs_sketch", "reservoir", "examples"):  # fmt: skip
        assert a[key] == b[key], key
    assert a["diff"]["count"] == b["diff"]["count"]
    assert merged["cand"].diff.mean == pytest.approx(expected["cand"].diff.mean, abs=1e-12)
    report_a = report_for(cfg, merged)
    report_b = report_for(cfg, expected)
    assert report_a["candidates"][0]["metrics"] == pytest.approx(
        report_b["candidates"][0]["metrics"], rel=1e-9
    )


def test_snapshots_persist_and_an_incompatible_one_is_refused(tmp_path: Path) -> None:
    cfg = config()
    comparator = fold(cfg, records(50, seed=2))
    path = tmp_path / "state" / "snapshot.json"
    write_snapshot(path, comparator.snapshot())
    assert [p.name for p in path.parent.iterdir()] == ["snapshot.json"]  # no temp file left
    restarted = Comparator(cfg)
    restarted.load(read_snapshot_file(path), str(path))
    assert restarted.targets["cand"].to_json() == comparator.targets["cand"].to_json()
    other_seed = config_from_dict({**_raw(cfg), "compare": {"seed": 8}})
    with pytest.raises(StateError, match="another layout"):
        Comparator(other_seed).load(read_snapshot_file(path), str(path))
    path.write_text('{"schema": "something/v9"}')
    with pytest.raises(StateError, match="not a shadowproxy.snapshot/v1"):
        Comparator(cfg).load(read_snapshot_file(path), str(path))


def _raw(cfg: Config) -> dict[str, Any]:
    return {
        "production": {"name": "prod", "version": "1", "url": "http://127.0.0.1:9"},
        "candidates": [{"name": "cand", "version": "2", "url": "http://127.0.0.1:10"}],
    }


def decision(cfg: Config, recs: list[PairRecord]) -> str:
    comparator = fold(cfg, recs)
    report = report_for(cfg, merge_snapshots([("x", comparator.snapshot())]))
    return str(report["candidates"][0]["decision"])


def test_too_few_samples_is_insufficient_data() -> None:
    assert decision(config(), records(50, seed=3)) == "insufficient_data"


def test_an_identical_candidate_is_promoted_and_never_rejected() -> None:
    cfg = config()
    outcomes = [decision(cfg, records(500, seed=s)) for s in range(20)]
    assert "reject" not in outcomes
    assert outcomes.count("promote") >= 19


def test_anytime_valid_intervals_are_wider_but_still_decide_with_more_data() -> None:
    fixed, anytime = config(0.95), config(0.95, anytime_valid=True)
    recs = records(300, seed=5)
    assert decision(fixed, recs) == "promote"
    assert decision(anytime, recs) == "insufficient_data"  # the same data, not yet conclusive
    assert decision(anytime, records(3000, seed=99)) == "promote"


def test_a_score_shift_and_a_label_flip_are_rejected() -> None:
    cfg = config()
    assert all(decision(cfg, records(300, seed=s, shift=0.1)) == "reject" for s in range(5))
    assert all(decision(cfg, records(500, seed=s, flip=0.05)) == "reject" for s in range(5))


def test_reports_are_reproducible_from_the_seed() -> None:
    cfg = config()
    recs = records(300, seed=4)
    first = report_for(cfg, merge_snapshots([("x", fold(cfg, recs).snapshot())]))
    intervals = first["candidates"][0]["evidence"]["metrics"]
    for name in ("score_mae", "score_bias", "score_p50_abs_diff", "score_p95_abs_diff",
                 "score_p99_abs_diff"):  # fmt: skip
        m = intervals[name]
        assert m["ci_low"] <= m["value"] <= m["ci_high"] or name == "score_p99_abs_diff", name
    again = report_for(cfg, merge_snapshots([("x", fold(cfg, recs).snapshot())]))
    assert first["candidates"][0]["gates"] == again["candidates"][0]["gates"]


def test_late_ground_truth_gives_accuracy_for_each_side() -> None:
    cfg = config()
    comparator = fold(cfg, [record(1, 0.9, 0.2), record(2, 0.1, 0.1)])
    assert comparator.feedback("req-1", 1) is True  # production right, candidate wrong
    assert comparator.feedback("req-2", 0) is True  # both right
    assert comparator.feedback("unknown", 1) is False
    st = comparator.targets["cand"]
    assert (st.feedback_rows, st.production_correct, st.candidate_correct) == (2, 2, 1)


def test_a_bad_feedback_label_is_refused_and_forgets_nothing() -> None:
    cfg = config()
    comparator = fold(cfg, [record(1, 0.9, 0.2)])
    for bad in (None, [], {"a": 1}, [[1], [2]], ["1", None]):
        with pytest.raises(ValueError, match="^label: "):
            comparator.feedback("req-1", bad)
    assert comparator.targets["cand"].feedback_rows == 0
    assert comparator.feedback("req-1", 1) is True  # still remembered
    assert comparator.targets["cand"].feedback_rows == 1


@pytest.mark.parametrize(
    ("label", "text"),
    [
        (1, ["1"]),
        (1.0, ["1"]),
        (True, ["1"]),
        (False, ["0"]),
        ("yes", ["yes"]),
        ([1, 2.0, False, "a"], ["1", "2", "0", "a"]),
    ],
)
def test_feedback_labels_are_read_as_the_models_labels_are(label: object, text: list[str]) -> None:
    assert truth_labels(label).tolist() == text
    if type(label) is not list and type(label) is not str:
        # The models' own labels, through the protocol reader.
        assert labels_array([label], "data").astype(str).tolist() == text


def test_feedback_matches_boolean_and_float_labels_of_the_models() -> None:
    cfg = config()
    answer = {"outputs": [
        {"name": "label", "shape": [1], "datatype": "BOOL", "data": [True]},
        {"name": "probabilities", "shape": [1, 2], "datatype": "FP64", "data": [0.2, 0.8]},
    ]}  # fmt: skip
    rec = record(1, 0.8, 0.8)
    rec.production.body = rec.shadows["cand"].body = orjson.dumps(answer)
    comparator = fold(cfg, [rec])
    assert comparator.feedback("req-1", True) is True
    st = comparator.targets["cand"]
    assert (st.production_correct, st.candidate_correct) == (1, 1)
    with pytest.raises(ValueError, match="0.5 is not a whole number"):
        truth_labels(0.5)


def test_the_thread_folds_what_is_queued_and_a_full_queue_drops_and_counts() -> None:
    comparator = Comparator(config(), queue_size=10)
    for r in records(25, seed=6):
        comparator.submit(r)  # nothing consumes yet: 10 fit, 15 are dropped
    assert comparator.dropped == 15
    comparator.start()
    assert comparator.stop(5.0) is True  # drains the queue before stopping
    assert comparator.processed == 10
    assert comparator.snapshot()["targets"]["cand"]["requests"] == 10


def test_the_thread_runs_at_background_priority_so_the_event_loop_comes_first() -> None:
    comparator = Comparator(config())
    assert comparator.background_priority is None
    comparator.start()
    try:
        for r in records(3, seed=2):
            comparator.submit(r)
        deadline = time.monotonic() + 10
        while comparator.processed < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert comparator.processed == 3
        assert comparator.background_priority is True
        thread = comparator._thread
        assert thread is not None and thread.native_id is not None
        assert os.getpriority(os.PRIO_PROCESS, thread.native_id) == BACKGROUND_NICE
        # The caller's thread keeps its own.
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < BACKGROUND_NICE
    finally:
        assert comparator.stop(5.0)


def _with_inputs(recs: list[PairRecord], rows: np.ndarray) -> list[PairRecord]:
    for r, row in zip(recs, rows, strict=True):
        r.request_body = orjson.dumps(
            {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": row.tolist()}]}
        )
    return recs


def test_input_drift_against_the_reference_and_slices(tmp_path: Path) -> None:
    from shadowproxy.compare.evidence import Evaluator, evidence
    from shadowproxy.compare.reference import build_reference

    rng = np.random.default_rng(11)
    train = rng.normal(size=(2000, 2))
    np.save(tmp_path / "train.npy", train)
    reference = build_reference(tmp_path / "train.npy", ["age", "balance"], bins=10)
    cfg = config_from_dict(
        {**_raw(config()), "compare": {"features": ["age", "balance"], "seed": 7,
                                       "outputs": {"score": "probabilities", "label": "label"}}}
    )  # fmt: skip
    same = Comparator(cfg, reference)
    shifted = Comparator(cfg, reference)
    for r in _with_inputs(records(600, seed=1), rng.normal(size=(600, 2))):
        same.update(r)
    moved = rng.normal(size=(600, 2)) + np.array([1.5, 0.0])
    for r in _with_inputs(records(600, seed=1, flip=0.2), moved):
        shifted.update(r)
    same.flush()
    shifted.flush()
    evaluator = Evaluator(cfg.promotion, cfg.compare.seed)
    ev_same = evidence(same.targets["cand"], evaluator, reference=reference)
    ev_moved = evidence(shifted.targets["cand"], evaluator, reference=reference)
    assert ev_same["metrics"]["input_psi_max"]["value"] < 0.1
    assert ev_moved["metrics"]["input_psi_max"]["value"] > 0.5
    drift = {d["feature"]: d for d in ev_moved["input_drift"]}
    assert drift["age"]["ks_pvalue"] < 1e-6 and drift["balance"]["ks_pvalue"] > 1e-3
    assert ev_moved["slices"] and all(0 <= s["flip_rate"] <= 1 for s in ev_moved["slices"])


def test_a_sample_rate_compares_the_same_share_on_every_replica() -> None:
    cfg = config_from_dict({**_raw(config()), "compare": {"sample_rate": 0.25, "seed": 7}})
    replicas = [Comparator(cfg, queue_size=1000), Comparator(cfg, queue_size=1000)]
    recs = records(400, seed=8)
    for comparator in replicas:
        for r in recs:
            comparator.submit(r)
    queued = [c.queue.qsize() for c in replicas]
    assert queued[0] == queued[1] and 60 <= queued[0] <= 140  # about a quarter, the same ones


def test_with_a_sampling_key_the_comparator_takes_the_keyed_share() -> None:
    cfg = config_from_dict({**_raw(config()), "compare": {"sample_rate": 0.25, "seed": 7}})
    key = b"a-secret-the-replicas-share"
    recs = records(400, seed=8)
    salt = keyed_salt(key, MIRROR_PURPOSE)
    keyed = [r.request_id for r in recs if is_sampled(r.request_id, 0.25, salt)]
    plain = [r.request_id for r in recs if is_sampled(r.request_id, 0.25)]
    assert keyed != plain
    comparator = Comparator(cfg, queue_size=1000, sampling_key=key)
    for r in recs:
        comparator.submit(r)
    taken = comparator.queue.take(1000, 0.0)
    assert [r.request_id for r in taken if r is not None] == keyed


def _mixed_records(n: int, seed: int) -> list[PairRecord]:
    """One-row answers (the fast path) interleaved with answers only the full extraction
    reads: two rows, null scores, three classes, text labels, broken bodies, failures."""
    rng = np.random.default_rng(seed)
    out = records(n, seed=seed)
    for i, r in enumerate(out):
        assert r.production is not None
        cand = r.shadows["cand"]
        kind = int(rng.integers(0, 8))
        if kind == 1:  # two rows on both sides
            cand.body = r.production.body = orjson.dumps(
                {"outputs": [{"name": "probabilities", "shape": [2, 2], "datatype": "FP32",
                              "data": [0.1, 0.9, 0.6, 0.4]},
                             {"name": "label", "shape": [2], "datatype": "INT64",
                              "data": [1, 0]}]}
            )  # fmt: skip
        elif kind == 2:  # a null score on the candidate's side (read as NaN)
            cand.body = orjson.dumps(
                {"outputs": [{"name": "probabilities", "shape": [1, 2], "datatype": "FP32",
                              "data": [None, 0.5]},
                             {"name": "label", "shape": [1, 1], "datatype": "INT64",
                              "data": [1]}]}
            )  # fmt: skip
        elif kind == 3:  # three classes and text labels on both sides
            p = rng.dirichlet([1, 1, 1]).tolist()
            c = rng.dirichlet([1, 1, 1]).tolist()
            r.production.body, cand.body = (
                orjson.dumps(
                    {
                        "outputs": [
                            {
                                "name": "label",
                                "shape": [1],
                                "datatype": "BYTES",
                                "data": [f"class-{int(np.argmax(v))}"],
                            },
                            {
                                "name": "probabilities",
                                "shape": [1, 3],
                                "datatype": "FP32",
                                "data": v,
                            },
                        ]
                    }
                )  # fmt: skip
                for v in (p, c)
            )
        elif kind == 4:
            cand.body = b"{broken"
        elif kind == 5:
            cand.outcome, cand.body = "timeout", b""
        out[i] = r
    return out


def test_the_one_row_fast_path_leaves_exactly_the_state_of_the_full_extraction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = config()
    recs = _mixed_records(1500, seed=12)
    fast = fold(cfg, recs)
    fast_rows = sum(
        fast.protocol.extract_row(r.shadows["cand"].body, fast.outputs) is not None for r in recs
    )
    assert 500 < fast_rows < 1400  # both paths are exercised
    slow = Comparator(cfg)
    monkeypatch.setattr(slow.protocol, "extract_row", lambda body, outputs: None)
    for r in recs:
        slow.update(r)
    slow.flush()
    a, b = fast.snapshot(), slow.snapshot()
    for key in ("written_at", "replica"):  # when, and which process: not the state
        a.pop(key), b.pop(key)
    assert a["targets"]["cand"]["compared"] > 1000
    assert a == b  # bit for bit: reservoirs, sketches, moments, flips, examples
    for request_id in ("req-12000000", "req-12000007"):
        assert fast.feedback(request_id, 1) == slow.feedback(request_id, 1)
    assert fast.snapshot()["targets"] == slow.snapshot()["targets"]


def test_with_a_sampling_key_reservoirs_are_keyed_and_snapshots_checked_against_it() -> None:
    cfg = config()
    key = b"a-secret-the-replicas-share"
    recs = records(300, seed=9)
    keyed = [Comparator(cfg, sampling_key=key) for _ in range(2)]
    for comparator, part in zip(keyed, (recs[::2], recs[1::2]), strict=True):
        for r in part:
            comparator.update(r)
    left, right = (c.snapshot() for c in keyed)
    assert left["targets"]["cand"]["reservoir"]["key_id"] == key_id(reservoir_key_from(key))
    assert key.decode() not in orjson.dumps(left).decode()
    plain = fold(cfg, recs).snapshot()
    assert plain["targets"]["cand"]["reservoir"]["ids"] != (
        merge_snapshots([("a", left), ("b", right)])["cand"].reservoir.ids  # type: ignore[union-attr]
    )
    # A restart with the key resumes; with another key, or none, the snapshot is refused.
    Comparator(cfg, sampling_key=key).load(left, "a.json")
    with pytest.raises(StateError, match=r"^a\.json: reservoir was drawn under the sampling"):
        Comparator(cfg, sampling_key=b"another-secret-entirely").load(left, "a.json")
    with pytest.raises(StateError, match="is read with no sampling key"):
        Comparator(cfg).load(left, "a.json")
    # Replicas that do not share the key cannot be merged; a report without the key merges
    # the keyed ones as stored, with the key it checks them.
    with pytest.raises(StateError, match=r"^plain: cannot merge a reservoir drawn under"):
        merge_snapshots([("a", left), ("plain", plain)])
    unchecked = merge_snapshots([("a", left), ("b", right)])
    checked = merge_snapshots([("a", left), ("b", right)], reservoir_key_from(key))
    assert unchecked["cand"].to_json() == checked["cand"].to_json()


# -- which evidence may be put together ---------------------------------------------------


def _versions(candidate: str = "2", production: str = "1") -> Config:
    return config_from_dict(
        {
            "production": {"name": "prod", "version": production, "url": "http://127.0.0.1:9"},
            "candidates": [{"name": "cand", "version": candidate, "url": "http://127.0.0.1:10"}],
            "compare": {"outputs": {"score": "probabilities", "label": "label"}, "seed": 7},
        }
    )


def test_a_restart_under_another_version_leaves_the_old_evidence_out() -> None:
    old = fold(config(), records(50, seed=1)).snapshot()  # cand version 2, prod version 1
    same = Comparator(_versions())
    assert same.load(old) == {}
    assert same.targets["cand"].requests == 50
    assert same.replica_id == old["replica"]  # the same replica, resumed
    bumped = Comparator(_versions(candidate="3"))
    left_out = bumped.load(old)
    assert list(left_out) == ["cand"] and "version '2' is now configured as" in left_out["cand"]
    assert "cand" not in bumped.targets  # starts afresh
    new_production = Comparator(_versions(production="9"))
    assert "production 'prod' version '1'" in new_production.load(old)["cand"]
    assert new_production.targets == {}


def test_the_same_replica_twice_or_another_production_is_refused_in_a_merge() -> None:
    first = fold(config(), records(30, seed=1)).snapshot()
    other = fold(config(), records(30, seed=2)).snapshot()
    assert merge_snapshots([("a", first), ("b", other)])["cand"].requests == 60
    later = copy.deepcopy(first)  # the same replica's state, taken again later
    with pytest.raises(StateError, match="^b: the same replica as a"):
        merge_snapshots([("a", first), ("b", later)])
    production = {"name": "prod", "version": "1"}
    assert merge_snapshots([("a", first)], production=production)["cand"].requests == 30
    with pytest.raises(StateError, match="^a: measured against production 'prod' version '1'"):
        merge_snapshots([("a", first)], production={"name": "prod", "version": "2"})
    reseeded = Comparator(
        config_from_dict({"production": {"name": "prod", "url": "http://127.0.0.1:9"},
                          "compare": {"seed": 8}})
    )  # fmt: skip
    with pytest.raises(StateError, match="^a: written with another layout"):
        merge_snapshots([("a", first)], layout=reseeded.fingerprint())


def test_error_rate_delta_compares_the_two_sides_on_the_same_requests() -> None:
    # Production fails the first 200 requests, which the candidate never got (dropped, as
    # by its budget); of the 600 it got, it failed 30 and production none.
    recs = []
    for i in range(1000):
        r = record(i, 0.3, 0.3, "dropped" if i < 400 else "error" if i < 430 else "ok")
        if i < 200:
            r.production.outcome = "error"
        recs.append(r)
    cfg = config()
    report = report_for(cfg, merge_snapshots([("x", fold(cfg, recs).snapshot())]))
    metrics = report["candidates"][0]["evidence"]["metrics"]
    delta = metrics["error_rate_delta"]
    assert delta["value"] == pytest.approx(30 / 600)
    assert delta["ci_low"] > 0  # the candidate is worse, not better
    assert metrics["error_rate"]["value"] == pytest.approx(30 / 600)
    # Every mirrored request, by outcome, in the evidence: the rates' denominators.
    assert report["candidates"][0]["evidence"]["outcomes"] == {
        "requests": 1000, "ok": 570, "error": 30, "timeout": 0, "invalid": 0, "dropped": 400,
    }  # fmt: skip


def test_a_nan_score_is_counted_and_left_out_of_every_interval() -> None:
    recs = records(400, seed=3, noise=0.02)
    broken = record(99_999, 0.5, 0.5)
    broken.shadows["cand"].body = orjson.dumps({"outputs": [
        {"name": "label", "shape": [1], "datatype": "INT64", "data": [1]},
        {"name": "probabilities", "shape": [1, 2], "datatype": "FP64", "data": [0.5, None]},
    ]})  # fmt: skip
    cfg = config()
    clean = report_for(cfg, merge_snapshots([("x", fold(cfg, recs).snapshot())]))
    with_nan = report_for(cfg, merge_snapshots([("x", fold(cfg, [*recs, broken]).snapshot())]))
    before = clean["candidates"][0]["evidence"]["metrics"]
    after = with_nan["candidates"][0]["evidence"]["metrics"]
    for name in ("score_mae", "score_bias", "score_p99_abs_diff", "score_wasserstein"):
        assert after[name]["value"] == pytest.approx(before[name]["value"]), name
        assert after[name]["ci_low"] is not None or name == "score_wasserstein", name
    assert after["score_mae"]["ci_low"] == pytest.approx(before["score_mae"]["ci_low"], rel=0.05)
    assert after["score_nonfinite_rate"]["value"] == pytest.approx(1 / 401)
    assert before["score_nonfinite_rate"]["value"] == 0


def test_an_estimate_without_an_interval_is_not_decided_on_its_value() -> None:
    cfg = config(min_samples=1)  # one pair: enough samples, too few for a bootstrap
    report = report_for(cfg, merge_snapshots([("x", fold(cfg, [record(1, 0.5, 0.5)]).snapshot())]))
    gate = next(g for g in report["candidates"][0]["gates"] if g["metric"] == "score_mae")
    assert gate["value"] == 0 and gate["passed"] is None
    assert "too few for an interval" in gate["reason"]
