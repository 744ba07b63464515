"""Pair records to JSON-able dicts and back."""

from __future__ import annotations

import base64
import math
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shadowproxy.pairing.codec import (
    SCHEMA,
    PairLogError,
    decode_body,
    dumps_record,
    encode_body,
    loads_record,
    record_from_dict,
    record_to_dict,
)
from shadowproxy.pairing.record import OUTCOMES, Cost, Exchange, PairRecord
from shadowproxy.pairing.redact import REDACTED, REDACTED_NON_JSON

BIG = 1 << 30


def make_record(**changes: Any) -> PairRecord:
    record = PairRecord(
        request_id="req-1",
        started_at=1_718_000_000.125,
        method="POST",
        path="/v2/models/m/infer",
        request_body=b'{"inputs": [{"name": "x", "data": [1, 2]}]}',
        request_content_type="application/json",
        production=Exchange(
            role="production",
            name="prod",
            version="1",
            outcome="ok",
            status=200,
            latency_s=0.0123,
            body=b'{"outputs": [0.5]}',
            content_type="application/json",
            cost=Cost(
                cpu_s=0.00042,
                compute_s=0.0003,
                queue_s=0.001,
                ipc_s=0.0001,
                rss_bytes=123456789.0,
                threads=3,
                child_processes=14,
            ),
        ),
        shadows={
            "cand": Exchange(
                role="candidate",
                name="cand",
                version="2",
                outcome="timeout",
                latency_s=0.1,
                detail="deadline 100 ms",
            ),
            "baseline": Exchange(
                role="baseline",
                name="baseline",
                version="1",
                outcome="ok",
                status=200,
                body=b"\x00\xff\xfebinary",
                content_type="application/octet-stream",
                body_truncated=True,
            ),
        },
    )
    for name, value in changes.items():
        setattr(record, name, value)
    return record


def roundtrip(record: PairRecord, max_body_bytes: int = BIG) -> PairRecord:
    return loads_record(dumps_record(record, max_body_bytes=max_body_bytes))


def test_round_trip_is_exact() -> None:
    record = make_record()
    assert roundtrip(record) == record


def test_line_layout() -> None:
    line = dumps_record(make_record(), max_body_bytes=BIG)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    data = orjson.loads(line)
    assert data["schema"] == SCHEMA
    assert data["request"]["body"] == {"text": '{"inputs": [{"name": "x", "data": [1, 2]}]}'}
    assert list(data["shadows"]) == ["cand", "baseline"]
    assert data["shadows"]["cand"]["status"] is None


def test_record_without_answers_round_trips() -> None:
    record = make_record(production=None, shadows={}, request_body=b"")
    assert roundtrip(record) == record


def test_binary_body_is_base64() -> None:
    body = bytes(range(256))
    data = record_to_dict(make_record(request_body=body), max_body_bytes=BIG)
    assert data["request"]["body"] == {"base64": base64.b64encode(body).decode()}
    assert record_from_dict(data).request_body == body


def test_text_body_is_text() -> None:
    assert encode_body("héllo ✓".encode(), max_body_bytes=BIG) == {"text": "héllo ✓"}


def test_truncated_text_is_flagged_with_the_original_size() -> None:
    body = b"x" * 100
    assert encode_body(body, max_body_bytes=10) == {
        "text": "x" * 10,
        "truncated": True,
        "size": 100,
    }


def test_truncation_inside_a_character_keeps_text_up_to_it() -> None:
    body = "ééééé".encode()  # 10 bytes, 2 per character
    encoded = encode_body(body, max_body_bytes=5)
    assert encoded == {"text": "éé", "truncated": True, "size": 10}


def test_truncated_binary_is_base64_of_the_prefix() -> None:
    body = b"\xff" * 50
    encoded = encode_body(body, max_body_bytes=8)
    assert encoded == {
        "base64": base64.b64encode(b"\xff" * 8).decode(),
        "truncated": True,
        "size": 50,
    }
    assert decode_body(encoded) == b"\xff" * 8


def test_zero_max_body_bytes_keeps_only_sizes() -> None:
    data = record_to_dict(make_record(), max_body_bytes=0)
    assert data["request"]["body"]["text"] == ""
    assert data["request"]["body"]["size"] == len(make_record().request_body)
    assert data["shadows"]["cand"]["body"] == {"text": ""}  # empty: nothing was cut


def test_log_truncation_marks_the_exchange_as_truncated() -> None:
    record = make_record()
    back = roundtrip(record, max_body_bytes=4)
    assert record.production is not None and back.production is not None
    assert back.production.body == record.production.body[:4]
    assert back.production.body_truncated
    assert back.request_body == record.request_body[:4]
    assert not back.shadows["cand"].body_truncated  # empty body, nothing cut


def test_redaction_applies_to_request_and_every_exchange() -> None:
    record = make_record(request_body=b'{"customer": {"email": "a@b.c"}, "n": 1}')
    assert record.production is not None
    record.production.body = b'{"customer": {"email": "a@b.c"}}'
    record.shadows["cand"].body = b"email=a@b.c"
    data = record_to_dict(record, max_body_bytes=BIG, redact=("customer.email",))
    request_body = data["request"]["body"]
    assert request_body["redacted"] is True
    assert orjson.loads(request_body["text"]) == {"customer": {"email": REDACTED}, "n": 1}
    assert orjson.loads(data["production"]["body"]["text"]) == {"customer": {"email": REDACTED}}
    assert data["shadows"]["cand"]["body"]["text"] == REDACTED_NON_JSON.decode()
    assert b"a@b.c" not in orjson.dumps(data)


def test_truncated_size_is_the_size_as_received() -> None:
    body = b'{"customer": {"email": "' + b"x" * 100 + b'"}}'
    data = record_to_dict(
        make_record(request_body=body), max_body_bytes=10, redact=("customer.email",)
    )
    assert data["request"]["body"]["size"] == len(body)
    assert data["request"]["body"]["truncated"] is True


def test_non_finite_floats_round_trip() -> None:
    record = make_record(started_at=math.inf)
    assert record.production is not None
    record.production.latency_s = -math.inf
    data = orjson.loads(dumps_record(record, max_body_bytes=BIG))
    assert data["started_at"] == "inf"
    assert roundtrip(record) == record
    record.production.latency_s = math.nan
    back = roundtrip(record)
    assert back.production is not None and math.isnan(back.production.latency_s)


def test_wrong_schema_is_rejected() -> None:
    data = record_to_dict(make_record(), max_body_bytes=BIG)
    data["schema"] = "shadowproxy.pair/v9"
    with pytest.raises(PairLogError, match="unsupported schema"):
        record_from_dict(data)


@pytest.mark.parametrize(
    "spoil",
    [
        lambda d: d.pop("request_id"),
        lambda d: d.update(method=3),
        lambda d: d.update(started_at="soon"),
        lambda d: d.update(shadows=[]),
        lambda d: d["request"].update(body={"hex": "00"}),
        lambda d: d["request"].update(body={"base64": "!!!"}),
        lambda d: d["production"].update(outcome="great"),
        lambda d: d["production"].update(role="oracle"),
        lambda d: d["production"].update(status="200"),
        lambda d: d["production"].update(body_truncated="no"),
        lambda d: d["production"].pop("latency_s"),
    ],
)
def test_malformed_records_raise_pair_log_error(spoil: Any) -> None:
    data = record_to_dict(make_record(), max_body_bytes=BIG)
    spoil(data)
    with pytest.raises(PairLogError):
        record_from_dict(data)


def test_not_json_raises_pair_log_error() -> None:
    with pytest.raises(PairLogError, match="not JSON"):
        loads_record(b'{"schema": "shadowproxy.pa')
    with pytest.raises(PairLogError):
        loads_record(b"[1, 2]")


# -- properties ------------------------------------------------------------------------

# Strings a record can hold: JSON cannot carry lone surrogates.
texts = st.text(st.characters(codec="utf-8"), max_size=12)
finite = st.floats(allow_nan=False)
bodies = st.binary(max_size=64) | texts.map(lambda s: s.encode())

exchanges = st.builds(
    Exchange,
    role=st.sampled_from(["production", "candidate", "baseline"]),
    name=texts,
    version=texts,
    outcome=st.sampled_from(OUTCOMES),
    status=st.none() | st.integers(100, 599),
    latency_s=finite,
    body=bodies,
    content_type=texts,
    detail=texts,
    body_truncated=st.booleans(),
    cost=st.none()
    | st.builds(
        Cost,
        cpu_s=st.none() | finite,
        compute_s=st.none() | finite,
        rss_bytes=st.none() | finite,
        threads=st.none() | st.integers(0, 10_000),
        child_processes=st.none() | st.integers(0, 10_000),
    ),
)
records = st.builds(
    PairRecord,
    request_id=texts,
    started_at=finite,
    method=texts,
    path=texts,
    request_body=bodies,
    request_content_type=texts,
    production=st.none() | exchanges,
    shadows=st.dictionaries(texts, exchanges, max_size=3),
)


@given(record=records)
def test_round_trip_of_random_records(record: PairRecord) -> None:
    assert roundtrip(record) == record


@given(body=bodies, limit=st.integers(0, 80))
def test_truncation_keeps_a_flagged_prefix(body: bytes, limit: int) -> None:
    encoded = encode_body(body, max_body_bytes=limit)
    kept = decode_body(encoded)
    assert body.startswith(kept)
    assert len(kept) <= limit or kept == body
    if len(body) > limit:
        assert encoded["truncated"] is True
        assert encoded["size"] == len(body)
        assert len(body[len(kept) : limit]) <= 3  # at most a cut character is dropped
    else:
        assert kept == body
        assert "truncated" not in encoded


def test_a_log_line_without_costs_reads_as_unknown_cost() -> None:
    line = orjson.loads(dumps_record(make_record(), max_body_bytes=BIG))
    del line["production"]["cost"]
    assert loads_record(orjson.dumps(line)).production.cost is None  # type: ignore[union-attr]


def test_a_cost_that_is_not_a_number_is_refused() -> None:
    line = orjson.loads(dumps_record(make_record(), max_body_bytes=BIG))
    line["production"]["cost"]["threads"] = "three"
    with pytest.raises(PairLogError, match="cost.threads"):
        loads_record(orjson.dumps(line))


def test_a_refused_inputs_detail_keeps_where_but_not_what_under_redaction() -> None:
    from dataclasses import replace

    record = make_record()
    refused = replace(
        record.production,
        outcome="invalid",
        detail="input_invalid: inputs[0].data: 4.2e+39 is not a finite FP32 value",
    )
    logged = record_to_dict(replace(record, production=refused), max_body_bytes=4096,
                            redact=["inputs.*.data"])  # fmt: skip
    assert logged["production"]["detail"] == "input_invalid: inputs[0].data: [redacted]"
    plain = record_to_dict(replace(record, production=refused), max_body_bytes=4096)
    assert "4.2e+39" in plain["production"]["detail"]  # no rules: nothing to hide
