"""Per-tenant quotas: token bucket, in-flight, overrides; driven by a fake clock."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

from aggregate.application.quota import PROMISE_TTL_SECONDS, Protection, QuotaObserver
from aggregate.config import load_settings
from aggregate.domain.errors import ConfigError, InvalidArgumentError, QuotaExceededError
from aggregate.domain.quota import QuotaOverride, TenantQuota, parse_quota_overrides
from aggregate.domain.status import retry_after_ms_of, status_of


class Clock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


class Rejections(QuotaObserver):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def quota_rejected(self, tenant_id: str, reason: str) -> None:
        self.seen.append((tenant_id, reason))


def take(p: Protection, tenant: str, count: int) -> int:
    """Admit and finish up to ``count`` commands; returns how many were admitted."""
    admitted = 0
    for _ in range(count):
        try:
            with p.admit(tenant):
                admitted += 1
        except QuotaExceededError:
            pass
    return admitted


def test_the_bucket_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    seen = Rejections()
    p = Protection(TenantQuota(commands_per_second=10, burst=20), observer=seen, clock=clock)
    assert take(p, "acme", 25) == 20
    assert seen.seen == [("acme", "rate")] * 5
    clock.now += 0.5
    assert take(p, "acme", 10) == 5
    with pytest.raises(QuotaExceededError) as info, p.admit("acme"):
        pass
    assert info.value.retry_after_ms == 100
    assert status_of(info.value) == ("RESOURCE_EXHAUSTED", 429)
    assert retry_after_ms_of(info.value) == 100
    assert "retry after 100 ms" in info.value.message
    clock.now += 0.05
    with pytest.raises(QuotaExceededError) as half:
        p.admit("acme")
    assert half.value.retry_after_ms == 50


def test_tenants_have_buckets_of_their_own() -> None:
    clock = Clock()
    p = Protection(TenantQuota(commands_per_second=5), clock=clock)
    assert take(p, "flooder", 50) == 5
    assert take(p, "steady", 5) == 5


def test_in_flight_quota_counts_commands_until_they_finish() -> None:
    p = Protection(TenantQuota(max_in_flight=2), in_flight_retry_after_ms=30, clock=Clock())
    first, second = p.admit("acme"), p.admit("acme")
    with first, second:
        with pytest.raises(QuotaExceededError) as info:
            p.admit("acme")
        assert info.value.retry_after_ms == 30
        assert p.status("acme").in_flight == 2
        with p.admit("other"):
            pass
    with p.admit("acme"):
        pass
    assert p.status("acme").as_dict() == {
        "commands_per_second": 0,
        "burst": 0,
        "max_in_flight": 2,
        "tokens": None,
        "in_flight": 0,
        "rejected": 1,
    }


def test_a_refused_command_costs_no_token() -> None:
    clock = Clock()
    p = Protection(TenantQuota(commands_per_second=1, max_in_flight=1), clock=clock)
    with p.admit("acme"), pytest.raises(QuotaExceededError):
        p.admit("acme")
    assert p.status("acme").tokens == 0
    clock.now += 1
    assert p.status("acme").tokens == 1


def test_overrides_layer_defaults_file_then_kv_field_by_field() -> None:
    clock = Clock()
    p = Protection(
        TenantQuota(commands_per_second=10, max_in_flight=5),
        file_overrides=parse_quota_overrides({"big": {"commands_per_second": 100, "burst": 200}}),
        clock=clock,
    )
    assert p.quota_of("big") == TenantQuota(100, 200, 5)
    assert p.quota_of("small") == TenantQuota(10, 0, 5)
    assert take(p, "big", 300) == 200
    p.set_kv_overrides(parse_quota_overrides({"big": {"burst": 50}, "small": {"max_in_flight": 0}}))
    assert p.quota_of("big") == TenantQuota(100, 50, 5)
    assert p.quota_of("small") == TenantQuota(10, 0, 0)
    clock.now += 10
    assert take(p, "big", 100) == 50  # the bucket shrank to the new burst
    p.set_kv_overrides(None)
    assert p.quota_of("big") == TenantQuota(100, 200, 5)


def test_no_quota_means_no_tracking_and_no_refusal() -> None:
    p = Protection(clock=Clock())
    assert take(p, "acme", 10_000) == 10_000
    assert p.status("acme").as_dict()["commands_per_second"] == 0


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ([], "must be an object"),
        ({"bad tenant!": {}}, "tenant id"),
        ({"acme": 5}, "must be an object"),
        ({"acme": {"rate": 5}}, "unknown field 'rate'"),
        ({"acme": {"burst": -1}}, "between 0 and 1000000"),
        ({"acme": {"burst": 10**7}}, "between 0 and 1000000"),
        ({"acme": {"burst": True}}, "must be an integer"),
        ({"acme": {"burst": 1.5}}, "must be an integer"),
        ({f"t{i}": {} for i in range(10_001)}, "at most 10000"),
    ],
)
def test_invalid_overrides_are_refused_naming_the_problem(value: object, fragment: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        parse_quota_overrides(value)
    assert fragment in info.value.message


def test_overrides_parse_to_partial_entries() -> None:
    parsed = parse_quota_overrides({"acme": {"max_in_flight": 3}})
    assert dict(parsed) == {"acme": QuotaOverride(max_in_flight=3)}


def test_the_config_file_carries_overrides_and_bad_ones_name_the_key(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "quota_commands_per_second: 50\nquota_overrides:\n  big: {commands_per_second: 500}\n"
    )
    settings = load_settings({"AGGREGATE_CONFIG_PATH": str(good)})
    assert settings.quota_commands_per_second == 50
    assert settings.quota_overrides["big"] == QuotaOverride(commands_per_second=500)
    bad = tmp_path / "bad.yaml"
    bad.write_text("quota_overrides:\n  big: {commands_per_second: -5}\n")
    with pytest.raises(ConfigError) as info:
        load_settings({"AGGREGATE_CONFIG_PATH": str(bad)})
    assert "key quota_overrides" in info.value.message
    assert "between 0 and 1000000" in info.value.message
    with pytest.raises(ConfigError) as env:
        load_settings({"AGGREGATE_QUOTA_OVERRIDES": "{}"})
    assert "AGGREGATE_QUOTA_OVERRIDES" in env.value.message


def test_check_refuses_what_admit_would_and_spends_nothing() -> None:
    clock = Clock()
    seen = Rejections()
    p = Protection(TenantQuota(commands_per_second=1, max_in_flight=1), observer=seen, clock=clock)
    p.check("acme")  # unknown yet: nothing to refuse
    with p.admit("acme"):
        with pytest.raises(QuotaExceededError) as busy:
            p.check("acme")
        assert "in flight" in busy.value.message
    with pytest.raises(QuotaExceededError) as rate:
        p.check("acme")
    assert rate.value.retry_after_ms == 1000
    clock.now += 1
    p.check("acme")
    p.check("acme")
    assert p.status("acme").tokens == 1  # checking spent nothing
    assert seen.seen == [("acme", "in_flight"), ("acme", "rate")]


def test_calls_that_passed_a_promised_check_hold_their_token_until_they_release_it() -> None:
    """Requests that arrive together are checked before any of them is admitted: each one
    that passes promises its token, so they do not all pass on the last one."""
    clock = Clock()
    p = Protection(TenantQuota(commands_per_second=1, burst=2), clock=clock)
    take(p, "acme", 1)  # tracked, one token left
    p.check("acme", promise=True)
    with pytest.raises(QuotaExceededError) as info:
        p.check("acme", promise=True)  # the one token is promised
    assert retry_after_ms_of(info.value) == 1000
    p.release("acme")  # the first call is about to be admitted
    assert take(p, "acme", 1) == 1
    with pytest.raises(QuotaExceededError):
        p.check("acme")
    assert p.status("acme").rejected == 2
    assert p.status("acme").tokens == 0


def test_a_promise_also_holds_an_in_flight_slot() -> None:
    p = Protection(TenantQuota(max_in_flight=2), clock=Clock())
    with p.admit("acme"):
        p.check("acme", promise=True)
        with pytest.raises(QuotaExceededError):
            p.check("acme", promise=True)
        p.release("acme")
        p.check("acme")


def test_a_promise_never_released_stops_counting_after_its_ttl() -> None:
    clock = Clock()
    p = Protection(TenantQuota(commands_per_second=1, burst=1), clock=clock)
    take(p, "acme", 1)
    clock.now += 1.0  # one token again
    p.check("acme", promise=True)  # its call vanishes without releasing it
    with pytest.raises(QuotaExceededError):
        p.check("acme")
    clock.now += PROMISE_TTL_SECONDS + 0.001  # (and the bucket is full again)
    p.check("acme")
    assert take(p, "acme", 1) == 1


def test_releasing_without_a_promise_changes_nothing() -> None:
    p = Protection(TenantQuota(commands_per_second=1, burst=1), clock=Clock())
    take(p, "acme", 1)
    p.release("acme")
    p.release("nobody")
    with pytest.raises(QuotaExceededError):
        p.check("acme")


def test_each_promise_lapses_on_its_own_ttl_not_the_first_ones() -> None:
    """Under steady arrivals promises overlap; one made late still counts after an early
    one has lapsed."""
    clock = Clock()
    p = Protection(TenantQuota(max_in_flight=2), clock=clock)
    take(p, "acme", 1)  # the tenant is tracked
    p.check("acme", promise=True)  # call A
    clock.now += 0.5
    p.check("acme", promise=True)  # call B
    clock.now += 0.1
    p.release("acme")  # A comes to admit
    with p.admit("acme"):
        clock.now += PROMISE_TTL_SECONDS - 0.55  # past A's promise, not past B's
        with pytest.raises(QuotaExceededError):
            p.check("acme")  # A in flight and B promised: both slots taken
        clock.now += 0.5  # B's promise has lapsed too (its call vanished)
        p.check("acme")
