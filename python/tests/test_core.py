"""The in-memory API: limits and their errors, buckets, keyed limiters, reservations."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from tollgate import InsufficientCapacity, KeyedLimiter, Limit, TokenBucket


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(capacity=0, refill=1, interval=1.0), "capacity"),
        (dict(capacity=-5, refill=1, interval=1.0), "capacity"),
        (dict(capacity=5, refill=0, interval=1.0), "refill"),
        (dict(capacity=5, refill=6, interval=1.0), "refill"),
        (dict(capacity=5, refill=1, interval=0), "interval"),
        (dict(capacity=5, refill=1, interval=-1.0), "interval"),
        (dict(capacity=5, refill=1, interval=float("nan")), "interval"),
        (dict(capacity=5, refill=1, interval=timedelta(seconds=-1)), "interval"),
    ],
)
def test_invalid_limits_raise_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError) as e:
        Limit(**kwargs)
    assert field in str(e.value)


def test_interval_is_seconds_or_a_timedelta_exactly():
    assert Limit(capacity=10, refill=2, interval=1.5) == Limit(
        capacity=10, refill=2, interval=timedelta(milliseconds=1500)
    )
    assert Limit(capacity=10, refill=2, interval=timedelta(days=1)).interval == 86_400.0
    with pytest.raises(TypeError, match="interval"):
        Limit(capacity=10, refill=2, interval="1s")
    g = Limit(capacity=10, refill=5, interval=1.0, greedy=True)
    assert g.greedy and not Limit(capacity=10, refill=5, interval=1.0).greedy
    assert Limit.per_second(5).capacity == 5
    assert Limit.per_minute(60).burst(10).capacity == 10
    assert Limit.per_hour(3).time_to_fill == pytest.approx(3_600.0)


def test_bucket_grants_capacity_then_denies_with_exact_waits():
    bucket = TokenBucket(Limit(capacity=10, refill=2, interval=1.0))
    results = [bucket.check() for _ in range(15)]
    assert [d.allowed for d in results] == [True] * 10 + [False] * 5
    denied = results[-1]
    assert not denied and denied.remaining == 0 and denied.capacity == 10
    # Interval refill: the next tokens come at the end of the current second.
    assert 0 < denied.retry_after <= 1.0
    assert denied.retry_after_ns == round(denied.retry_after * 1e9) or abs(
        denied.retry_after_ns - denied.retry_after * 1e9
    ) < 1_000
    assert denied.retry_after_timedelta >= timedelta(microseconds=denied.retry_after_ns // 1000)
    assert 4.0 <= denied.reset_after <= 5.0
    with pytest.raises(InsufficientCapacity):
        bucket.try_acquire(11)
    assert issubclass(InsufficientCapacity, ValueError)


def test_peek_refund_add_reset():
    bucket = TokenBucket(Limit.per_hour(5))
    assert bucket.try_acquire(3).remaining == 2
    assert bucket.try_acquire(0).remaining == 2  # a peek
    assert bucket.refund(1).remaining == 3
    assert bucket.add_tokens(10).remaining == 5  # capped
    bucket.try_acquire(5)
    assert bucket.snapshot().remaining == 0
    assert bucket.reset().remaining == 5


def test_reservations_cancel_as_an_undo():
    bucket = TokenBucket(Limit.per_hour(10))
    r = bucket.reserve(4)
    assert r.granted and r.tokens == 4 and r.decision.remaining == 6
    assert r.cancel().remaining == 10
    assert r.cancel().remaining == 6, "a second cancel gives nothing back"
    bucket.try_acquire(10)
    denied = bucket.reserve(1)
    assert not denied.granted
    assert denied.cancel().remaining == 0


def test_keyed_limiter_keys_are_independent_and_typed():
    limiter = KeyedLimiter(Limit(capacity=2, refill=1, interval=60.0))
    assert [limiter.check("alice").allowed for _ in range(3)] == [True, True, False]
    assert limiter.check("bob").allowed
    assert limiter.check(b"carol").allowed and limiter.check(42).allowed
    assert len(limiter) == 4
    with pytest.raises(TypeError):
        limiter.check(1.5)
    with pytest.raises(InsufficientCapacity):
        limiter.try_acquire("alice", 3)
    r = limiter.reserve("dave", 2)
    assert r.granted and limiter.snapshot("dave").remaining == 0
    assert r.cancel().remaining == 2
    assert not limiter.reserve("alice", 1).granted
    assert limiter.refund("alice", 1).remaining == 1


def test_threads_never_exceed_the_capacity():
    limiter = KeyedLimiter(Limit(capacity=1_000, refill=1, interval=3_600.0))
    granted = []

    def worker():
        n = sum(limiter.check("hot").allowed for _ in range(600))
        granted.append(n)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 2,400 tries against 1,000 tokens (at most one more refill in the run).
    assert 1_000 <= sum(granted) <= 1_001


def test_limits_and_decisions_print_plainly():
    limit = Limit(capacity=10, refill=2, interval=1.0)
    assert repr(limit) == "Limit(capacity=10, refill=2, interval=1.0, greedy=False)"
    assert repr(TokenBucket(limit).check()).startswith("Decision(allowed=True, capacity=10")
