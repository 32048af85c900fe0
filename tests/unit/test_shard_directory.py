"""The shard directory's pure parts: entry validation, dialable addresses, the advertised
entry, ring placement over the live shards, and the move request (DESIGN §11)."""

from __future__ import annotations

import json
import socket

import pytest

from aggregate.application.admin import parse_move
from aggregate.client import _owner_addr
from aggregate.config import load_settings
from aggregate.domain.directory import (
    MAX_ENTRY_BYTES,
    ShardEntry,
    parse_entry,
    validate_dial_address,
)
from aggregate.domain.errors import ConfigError, InvalidArgumentError
from aggregate.domain.placement import HashRing, Hosting, PlacementDecision, validate_placement
from aggregate.service.shards import advertised_entry

GOOD = {
    "shard_id": "shard-b",
    "grpc_addr": "10.0.0.2:50051",
    "http_addr": "node-b.internal:8080",
    "started_at": 1_700_000_000.5,
    "version": "0.4.0+dev",
}


def raw(**changes: object) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def test_a_good_entry_round_trips() -> None:
    entry = parse_entry(raw(), key="shard-b")
    assert entry == ShardEntry(**GOOD)  # type: ignore[arg-type]
    assert parse_entry(entry.to_json(), key="shard-b") == entry


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"[" * 2000, "not UTF-8 JSON"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "version"}).encode(), "exactly"),
        (raw(extra=1), "exactly"),
        (raw(shard_id="bad shard"), "shard id"),
        (raw(shard_id="shard-c"), "names shard"),
        (raw(grpc_addr="0.0.0.0:50051"), "wildcard"),
        (raw(grpc_addr="[::]:50051"), "wildcard"),
        (raw(grpc_addr="10.0.0.2:0"), "port"),
        (raw(grpc_addr="10.0.0.2:70000"), "port"),
        (raw(http_addr="evil\r\nx-admin: 1:80"), "not a host name"),
        (raw(http_addr="a" * 300 + ":80"), "not a host:port"),
        (raw(http_addr=8080), "not a host:port"),
        (raw(started_at=-1), "started_at"),
        (raw(started_at=True), "started_at"),
        (raw(version="1.0 beta"), "version"),
        (raw(version="x" * 65), "version"),
    ],
)
def test_a_bad_entry_is_refused_with_a_reason(value: bytes, fragment: str) -> None:
    with pytest.raises(InvalidArgumentError, match=fragment):
        parse_entry(value, key="shard-b")


def test_an_entry_over_the_size_limit_is_refused_unread() -> None:
    with pytest.raises(InvalidArgumentError, match=f"{MAX_ENTRY_BYTES}-byte limit"):
        parse_entry(b" " * (MAX_ENTRY_BYTES + 1))


@pytest.mark.parametrize(
    "addr", ["127.0.0.1:1", "node-a:50051", "[::1]:8080", "a.b-c.example:65535"]
)
def test_dialable_addresses(addr: str) -> None:
    assert validate_dial_address(addr) == addr


@pytest.mark.parametrize(
    "addr", ["0.0.0.0:1", ":50051", "node-a", "node_a:1", "[::]:1", "[zz]:1", "-a:1", "é:1"]
)
def test_undialable_addresses(addr: str) -> None:
    with pytest.raises(InvalidArgumentError):
        validate_dial_address(addr)


def test_the_advertised_entry_replaces_a_wildcard_host_with_the_host_name() -> None:
    settings = load_settings({"AGGREGATE_SHARD_ID": "shard-a"})
    entry = advertised_entry(settings, ("0.0.0.0", 50051), ("0.0.0.0", 8080))
    host = socket.gethostname()
    assert (entry.grpc_addr, entry.http_addr) == (f"{host}:50051", f"{host}:8080")
    bound = advertised_entry(settings, ("127.0.0.1", 41000), ("127.0.0.1", 41001))
    assert (bound.grpc_addr, bound.http_addr) == ("127.0.0.1:41000", "127.0.0.1:41001")


def test_advertise_settings_win_and_the_http_host_follows_the_grpc_one() -> None:
    settings = load_settings({"AGGREGATE_ADVERTISE_GRPC_ADDR": "shard-a.svc:50051"})
    entry = advertised_entry(settings, ("0.0.0.0", 50051), ("0.0.0.0", 8080))
    assert (entry.grpc_addr, entry.http_addr) == ("shard-a.svc:50051", "shard-a.svc:8080")


def test_a_wildcard_advertise_setting_stops_the_start() -> None:
    with pytest.raises(ConfigError, match=r"wildcard.*AGGREGATE_ADVERTISE_HTTP_ADDR"):
        load_settings({"AGGREGATE_ADVERTISE_HTTP_ADDR": "0.0.0.0:8080"})


# --- ring placement over the live shards -----------------------------------------------

TENANTS = [f"t{i}" for i in range(200)]


def test_a_dead_shard_loses_only_its_ring_tenants_and_gets_them_back() -> None:
    placement = validate_placement({"pinned": "shard-b"})
    three = PlacementDecision("shard-a", placement).with_live_shards({"a", "shard-a", "shard-b"})
    two = three.with_live_shards({"a", "shard-a"})
    before = {t: three.owner_of(t) for t in TENANTS}
    after = {t: two.owner_of(t) for t in TENANTS}
    assert set(after.values()) == {"a", "shard-a"}
    # Only shard-b's tenants moved; every other tenant kept its owner.
    assert all(after[t] == before[t] for t in TENANTS if before[t] != "shard-b")
    assert any(before[t] == "shard-b" for t in TENANTS)
    # A pinned tenant stays pinned to its dead shard.
    assert two.owner_of("pinned") == "shard-b"
    assert two.hosting("pinned") is Hosting.ELSEWHERE
    back = two.with_live_shards({"a", "shard-a", "shard-b"})
    assert {t: back.owner_of(t) for t in TENANTS} == before


def test_without_a_directory_the_ring_is_over_the_map_shards() -> None:
    placement = validate_placement({"x": "shard-b"})
    decision = PlacementDecision("shard-a", placement)
    assert {decision.owner_of(t) for t in TENANTS} == {"shard-b"}
    assert decision.with_live_shards({"shard-a"}).owner_of("t1") == "shard-a"
    assert decision.with_live_shards({"shard-a"}).with_live_shards(None) == decision


def test_with_a_directory_and_no_map_the_ring_places_every_tenant() -> None:
    decision = PlacementDecision("shard-a").with_live_shards({"shard-a", "shard-b"})
    ring = HashRing({"shard-a", "shard-b"})
    assert {t: decision.owner_of(t) for t in TENANTS} == {t: ring.owner(t) for t in TENANTS}


def test_the_ring_is_kept_when_the_live_set_is_unchanged() -> None:
    decision = PlacementDecision("shard-a").with_live_shards({"shard-a", "shard-b"})
    assert decision.with_live_shards({"shard-b", "shard-a"}).live is decision.live


# --- the move request and the client's reading of the trailers -------------------------


def test_a_move_request_is_validated() -> None:
    wanted = parse_move(
        b'{"to": "shard-b", "timeout_ms": 5000}', tenant_id="acme", default_timeout_s=30
    )
    assert (wanted.tenant_id, wanted.to_shard, wanted.timeout_s) == ("acme", "shard-b", 5.0)
    assert parse_move(b'{"to": "b"}', tenant_id="acme", default_timeout_s=30).timeout_s == 30
    for body, fragment in (
        (b"{}", 'missing field "to"'),
        (b'{"to": "bad shard"}', "to: shard id"),
        (b'{"to": "b", "when": 1}', "unknown field"),
        (b'{"to": "b", "timeout_ms": -1}', "timeout_ms"),
    ):
        with pytest.raises(InvalidArgumentError, match=fragment):
            parse_move(body, tenant_id="acme", default_timeout_s=30)


def test_the_client_follows_only_a_dialable_owner_address() -> None:
    assert _owner_addr({"x-owner-addr": "10.0.0.2:50051"}) == "10.0.0.2:50051"
    assert _owner_addr({"x-owner-addr": "0.0.0.0:50051"}) is None
    assert _owner_addr({"x-owner-addr": "x" * 400}) is None
    assert _owner_addr({"x-owner-shard": "b"}) is None
    assert _owner_addr(None) is None
