"""Sampling is a pure function of the request id: deterministic, nested, and shared.

Unit properties of :func:`is_sampled`, then the end-to-end promise that follows from them:
every candidate and every replica mirrors exactly the same requests.
"""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowproxy.config.sampling_key import read_sampling_key
from shadowproxy.errors import ConfigError
from shadowproxy.shadow.sampling import MIRROR_PURPOSE, is_sampled, keyed_salt, sample_point
from tests.shadow.helpers import seen_ids
from tests.support.proxy import make_config, running_proxy
from tests.support.servers import Backend
from tests.support.waiting import settle, wait_for

ids = st.text(min_size=0, max_size=200)
rates = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
salts = st.binary(max_size=64)

N_EMPIRICAL = 20_000
EMPIRICAL_IDS = [f"req-{i}" for i in range(N_EMPIRICAL // 2)] + [
    uuid.UUID(int=i * 7919 + 1).hex for i in range(N_EMPIRICAL // 2)
]


# -- unit properties --------------------------------------------------------------------


@given(ids, rates, salts)
def test_decision_is_deterministic(request_id: str, rate: float, salt: bytes) -> None:
    first = is_sampled(request_id, rate, salt)
    assert all(is_sampled(request_id, rate, salt) is first for _ in range(3))
    assert sample_point(request_id, salt) == sample_point(request_id, salt)


@given(ids, salts)
def test_sample_point_is_in_unit_interval(request_id: str, salt: bytes) -> None:
    assert 0.0 <= sample_point(request_id, salt) < 1.0


@given(ids, rates, rates, salts)
def test_sampled_sets_nest_across_rates(request_id: str, a: float, b: float, salt: bytes) -> None:
    low, high = min(a, b), max(a, b)
    if is_sampled(request_id, low, salt):
        assert is_sampled(request_id, high, salt)
    if not is_sampled(request_id, high, salt):
        assert not is_sampled(request_id, low, salt)


@given(ids, salts)
def test_rate_zero_never_and_rate_one_always(request_id: str, salt: bytes) -> None:
    assert is_sampled(request_id, 0.0, salt) is False
    assert is_sampled(request_id, 1.0, salt) is True
    # Out-of-range rates clamp instead of raising or wrapping.
    assert is_sampled(request_id, -0.5, salt) is False
    assert is_sampled(request_id, 1.5, salt) is True


@given(ids, rates)
def test_decision_is_the_point_below_the_rate(request_id: str, rate: float) -> None:
    if 0.0 < rate < 1.0:
        assert is_sampled(request_id, rate) == (sample_point(request_id) < rate)


def test_tiny_rate_samples_almost_nothing_and_near_one_almost_everything() -> None:
    tiny = sum(is_sampled(i, 1e-9) for i in EMPIRICAL_IDS)
    almost = sum(is_sampled(i, 1 - 1e-9) for i in EMPIRICAL_IDS)
    assert tiny == 0
    assert almost == N_EMPIRICAL


def _within_binomial(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    sd = math.sqrt(n * p * (1 - p))
    return abs(count - n * p) <= sigmas * sd


def test_empirical_rate_matches_within_binomial_tolerance() -> None:
    for rate in (0.01, 0.1, 0.25, 0.5, 0.9, 0.99):
        count = sum(is_sampled(i, rate) for i in EMPIRICAL_IDS)
        assert _within_binomial(count, N_EMPIRICAL, rate), (rate, count)


def test_empirical_rate_with_a_salt() -> None:
    count = sum(is_sampled(i, 0.3, b"pairlog") for i in EMPIRICAL_IDS)
    assert _within_binomial(count, N_EMPIRICAL, 0.3), count


def test_sample_points_are_uniform_over_deciles() -> None:
    buckets = [0] * 10
    for request_id in EMPIRICAL_IDS:
        buckets[int(sample_point(request_id) * 10)] += 1
    for count in buckets:
        assert _within_binomial(count, N_EMPIRICAL, 0.1), buckets


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.binary(min_size=1, max_size=64))
def test_salts_give_independent_decisions(salt_a: bytes, salt_b: bytes) -> None:
    """Two salts select (statistically) independent sets: the overlap is rate squared."""
    if salt_a == salt_b:
        return
    ids_ = EMPIRICAL_IDS[:4000]
    a = {i for i in ids_ if is_sampled(i, 0.5, salt_a)}
    b = {i for i in ids_ if is_sampled(i, 0.5, salt_b)}
    assert _within_binomial(len(a), len(ids_), 0.5)
    assert _within_binomial(len(b), len(ids_), 0.5)
    # Independent: P(both) = 0.25. Identical or complementary sets would give 0.5 or 0.
    assert _within_binomial(len(a & b), len(ids_), 0.25), (len(a), len(b), len(a & b))


def test_unsalted_and_salted_decisions_differ() -> None:
    plain = {i for i in EMPIRICAL_IDS if is_sampled(i, 0.5)}
    salted = {i for i in EMPIRICAL_IDS if is_sampled(i, 0.5, b"pairlog")}
    assert plain != salted
    assert _within_binomial(len(plain & salted), N_EMPIRICAL, 0.25)


# -- through the proxy ------------------------------------------------------------------


def candidate(name: str, url: str, rate: float) -> dict[str, object]:
    return {
        "name": name,
        "version": "1",
        "url": url,
        "sample_rate": rate,
        "timeout_ms": 2000,
        "connect_timeout_ms": 2000,
    }


N_REQUESTS = 300


async def _send(port: int, explicit_ids: list[str], generated: int) -> list[str]:
    """POST once per explicit id, then ``generated`` times without one; return every id."""
    url = f"http://127.0.0.1:{port}/v2/models/m/infer"
    used: list[str] = []
    async with aiohttp.ClientSession() as session:
        for rid in explicit_ids:
            async with session.post(url, data=b'{"x": 1}', headers={"X-Request-Id": rid}) as r:
                assert r.status == 200
                assert r.headers["X-Request-Id"] == rid
                used.append(rid)
        for _ in range(generated):
            async with session.post(url, data=b'{"x": 1}') as r:
                assert r.status == 200
                used.append(r.headers["X-Request-Id"])
    return used


async def test_candidates_at_the_same_rate_get_exactly_the_same_requests(backend: Backend) -> None:
    c1, c2 = await Backend().start(), await Backend().start()
    try:
        config = make_config(
            backend.url,
            candidates=[
                candidate("c1", c1.url, 0.5),
                candidate("c2", c2.url, 0.5),
            ],
        )
        explicit = [f"sampling-{i}" for i in range(N_REQUESTS // 2)]
        async with running_proxy(config) as rt:
            used = await _send(rt.traffic_port, explicit, N_REQUESTS - len(explicit))
            expected = {rid for rid in used if is_sampled(rid, 0.5)}
            await wait_for(
                lambda: len(c1.seen) >= len(expected) and len(c2.seen) >= len(expected),
                what="both candidates to receive the sampled requests",
            )
            await settle(lambda: (len(c1.seen), len(c2.seen)))
        assert len(used) == len(set(used)) == N_REQUESTS
        # Not degenerate: the rate really splits the traffic.
        assert 0.3 * N_REQUESTS < len(expected) < 0.7 * N_REQUESTS
        got1, got2 = seen_ids(c1), seen_ids(c2)
        assert len(got1) == len(set(got1)), "a request was mirrored twice to c1"
        assert len(got2) == len(set(got2)), "a request was mirrored twice to c2"
        assert set(got1) == set(got2) == expected
    finally:
        await c1.stop()
        await c2.stop()


async def test_nested_rates_give_nested_sets(backend: Backend) -> None:
    low, high = await Backend().start(), await Backend().start()
    try:
        config = make_config(
            backend.url,
            candidates=[
                candidate("low", low.url, 0.2),
                candidate("high", high.url, 0.6),
            ],
        )
        async with running_proxy(config) as rt:
            used = await _send(rt.traffic_port, [f"nest-{i}" for i in range(200)], 0)
            want_low = {r for r in used if is_sampled(r, 0.2)}
            want_high = {r for r in used if is_sampled(r, 0.6)}
            await wait_for(
                lambda: len(low.seen) >= len(want_low) and len(high.seen) >= len(want_high),
                what="the sampled requests",
            )
            await settle(lambda: (len(low.seen), len(high.seen)))
        assert set(seen_ids(low)) == want_low
        assert set(seen_ids(high)) == want_high
        assert want_low < want_high
    finally:
        await low.stop()
        await high.stop()


async def test_replicas_sample_the_same_requests(backend: Backend) -> None:
    """Two proxy instances with the same config mirror the same set of request ids."""
    cand_a, cand_b = await Backend().start(), await Backend().start()
    try:
        candidate = {
            "name": "cand",
            "version": "1",
            "sample_rate": 0.5,
            "timeout_ms": 2000,
            "connect_timeout_ms": 2000,
        }
        config_a = make_config(backend.url, candidates=[{**candidate, "url": cand_a.url}])
        config_b = make_config(backend.url, candidates=[{**candidate, "url": cand_b.url}])
        explicit = [uuid.UUID(int=i).hex for i in range(1, 201)]
        async with running_proxy(config_a) as rt_a, running_proxy(config_b) as rt_b:
            await _send(rt_a.traffic_port, explicit, 0)
            await _send(rt_b.traffic_port, explicit, 0)
            expected = {rid for rid in explicit if is_sampled(rid, 0.5)}
            await wait_for(
                lambda: len(cand_a.seen) >= len(expected) and len(cand_b.seen) >= len(expected),
                what="both replicas to mirror",
            )
            await settle(lambda: (len(cand_a.seen), len(cand_b.seen)))
        assert set(seen_ids(cand_a)) == set(seen_ids(cand_b)) == expected
        assert len(seen_ids(cand_a)) == len(expected)
    finally:
        await cand_a.stop()
        await cand_b.stop()


# -- a key clients cannot know -------------------------------------------------------------

KEY = b"0123456789abcdef-replicas-share-this"


@given(st.binary(min_size=16, max_size=64), st.binary(max_size=16), ids, rates, rates)
def test_keyed_decisions_keep_every_property(
    key: bytes, purpose: bytes, request_id: str, a: float, b: float
) -> None:
    salt = keyed_salt(key, purpose)
    assert len(salt) == 32 and salt == keyed_salt(key, purpose)  # deterministic: replicas agree
    low, high = min(a, b), max(a, b)
    if is_sampled(request_id, low, salt):
        assert is_sampled(request_id, high, salt)


def test_without_a_key_the_salt_is_the_purpose() -> None:
    assert keyed_salt(None, b"pairlog") == b"pairlog"
    assert keyed_salt(None, MIRROR_PURPOSE) == b""


def test_a_key_gives_a_selection_unrelated_to_the_unkeyed_one() -> None:
    # What a client could compute without the key (the unkeyed point) tells it nothing.
    plain = {i for i in EMPIRICAL_IDS if is_sampled(i, 0.5)}
    keyed = {i for i in EMPIRICAL_IDS if is_sampled(i, 0.5, keyed_salt(KEY, MIRROR_PURPOSE))}
    other = {i for i in EMPIRICAL_IDS if is_sampled(i, 0.5, keyed_salt(KEY[::-1], MIRROR_PURPOSE))}
    assert _within_binomial(len(keyed), N_EMPIRICAL, 0.5)
    assert _within_binomial(len(plain & keyed), N_EMPIRICAL, 0.25)
    assert _within_binomial(len(other & keyed), N_EMPIRICAL, 0.25)
    # Purposes stay independent under the key too.
    logged = {i for i in EMPIRICAL_IDS if is_sampled(i, 0.5, keyed_salt(KEY, b"pairlog"))}
    assert _within_binomial(len(logged & keyed), N_EMPIRICAL, 0.25)


def test_reading_the_key_file(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"  " + KEY + b"\n")
    assert read_sampling_key(path) == KEY  # surrounding whitespace is not part of it
    cases = {
        tmp_path / "absent": "cannot read",
        tmp_path: "cannot read",  # a folder
    }
    short = tmp_path / "short"
    short.write_bytes(b"0123456789abcde\n")
    cases[short] = "holds 15 bytes; a key needs at least 16"
    big = tmp_path / "big"
    big.write_bytes(b"k" * 5000)
    cases[big] = "larger than 4096 bytes"
    for bad, message in cases.items():
        with pytest.raises(ConfigError) as caught:
            read_sampling_key(bad)
        (problem,) = caught.value.problems
        assert problem.path == "sampling.key_file" and message in problem.message, problem


async def test_with_a_key_the_proxy_mirrors_the_keyed_selection(
    backend: Backend, tmp_path: Path
) -> None:
    key_file = tmp_path / "sampling.key"
    key_file.write_bytes(KEY)
    cand = await Backend().start()
    try:
        config = make_config(
            backend.url,
            candidates=[candidate("cand", cand.url, 0.5)],
            sampling={"key_file": str(key_file)},
        )
        explicit = [f"keyed-{i}" for i in range(200)]
        salt = keyed_salt(KEY, MIRROR_PURPOSE)
        expected = {rid for rid in explicit if is_sampled(rid, 0.5, salt)}
        unkeyed = {rid for rid in explicit if is_sampled(rid, 0.5)}
        assert expected != unkeyed  # the test can tell which selection the proxy made
        async with running_proxy(config) as rt:
            await _send(rt.traffic_port, explicit, 0)
            await wait_for(lambda: len(cand.seen) >= len(expected), what="the keyed selection")
            await settle(lambda: len(cand.seen))
        assert set(seen_ids(cand)) == expected
    finally:
        await cand.stop()
