"""Pure placement: the hash ring, placement maps, their validation, and hosting decisions."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from aggregate.domain.errors import InvalidArgumentError
from aggregate.domain.placement import (
    HashRing,
    Hosting,
    PlacementDecision,
    PlacementMap,
    owner_of,
    parse_placement,
    validate_placement,
)

THREE = {"acme": "shard-a", "globex": "shard-b", "initech": "shard-c"}
TENANTS = [f"tenant-{i}" for i in range(10_000)]

# Pinned: a change here moves tenants between shards in every running deployment.
EXPECTED_OWNERS = {
    "tenant-1": "shard-c",
    "tenant-2": "shard-b",
    "tenant-3": "shard-a",
    "tenant-4": "shard-c",
    "umbrella": "shard-b",
    "hooli": "shard-c",
    "_default": "shard-b",
}


def test_ring_owners_are_pinned() -> None:
    placement = validate_placement(THREE)
    assert {t: placement.owner_of(t) for t in EXPECTED_OWNERS} == EXPECTED_OWNERS


def test_ring_is_the_same_in_another_process() -> None:
    # Python's hash() is salted per process; the ring must not depend on it.
    code = (
        "from aggregate.domain.placement import validate_placement\n"
        f"m = validate_placement({THREE!r})\n"
        "print(','.join(m.owner_of(f'tenant-{i}') or '' for i in range(200)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONHASHSEED": "12345"},
    ).stdout.strip()
    placement = validate_placement(THREE)
    assert out.split(",") == [placement.owner_of(f"tenant-{i}") for i in range(200)]


def test_ring_does_not_depend_on_map_order() -> None:
    forward = validate_placement(THREE)
    backward = validate_placement(dict(reversed(list(THREE.items()))))
    assert [forward.owner_of(t) for t in TENANTS[:500]] == [
        backward.owner_of(t) for t in TENANTS[:500]
    ]


def test_ring_balances_unmapped_tenants() -> None:
    placement = validate_placement(THREE)
    counts = Counter(placement.owner_of(t) for t in TENANTS)
    assert set(counts) == {"shard-a", "shard-b", "shard-c"}
    third = len(TENANTS) / 3
    for shard, count in counts.items():
        assert abs(count - third) <= 0.15 * third, (shard, count)


def test_adding_a_shard_moves_about_a_quarter_and_only_to_the_new_shard() -> None:
    before = validate_placement(THREE)
    after = validate_placement({**THREE, "hooli": "shard-d"})
    moved = [t for t in TENANTS if before.owner_of(t) != after.owner_of(t)]
    assert {after.owner_of(t) for t in moved} == {"shard-d"}
    assert 0.18 * len(TENANTS) <= len(moved) <= 0.32 * len(TENANTS)


def test_removing_a_shard_moves_only_its_tenants() -> None:
    before = validate_placement(THREE)
    after = validate_placement({"acme": "shard-a", "globex": "shard-b"})
    for tenant in TENANTS[:2000]:
        if before.owner_of(tenant) != "shard-c":
            assert after.owner_of(tenant) == before.owner_of(tenant)
        else:
            assert after.owner_of(tenant) in {"shard-a", "shard-b"}


def test_explicit_mappings_win_over_the_ring() -> None:
    ring_owner = validate_placement(THREE).owner_of("tenant-3")
    assert ring_owner == "shard-a"
    placement = validate_placement({**THREE, "tenant-3": "shard-b"})
    assert placement.owner_of("tenant-3") == "shard-b"
    assert owner_of("acme", placement) == "shard-a"
    assert owner_of("globex", placement) == "shard-b"


def test_no_map_or_an_empty_map_means_any_node() -> None:
    assert owner_of("acme", None) is None
    assert owner_of("acme", validate_placement({})) is None
    assert HashRing([]).owner("acme") is None


def test_single_shard_owns_everything() -> None:
    placement = validate_placement({"acme": "solo"})
    assert {placement.owner_of(t) for t in TENANTS[:300]} == {"solo"}


def test_parse_roundtrip_and_equality() -> None:
    placement = parse_placement(b'{"acme": "shard-a", "globex": "shard-b"}')
    assert placement == validate_placement({"globex": "shard-b", "acme": "shard-a"})
    assert parse_placement(placement.to_json()) == placement
    assert placement != validate_placement({"acme": "shard-b", "globex": "shard-b"})
    assert placement.shards == frozenset({"shard-a", "shard-b"})
    assert len(placement) == 2


def test_a_map_is_read_only() -> None:
    source = {"acme": "shard-a"}
    placement = validate_placement(source)
    source["acme"] = "shard-z"
    assert placement.owner_of("acme") == "shard-a"
    with pytest.raises(TypeError):
        placement.assignments["acme"] = "shard-z"  # type: ignore[index]


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        (b"[1, 2]", "got list"),
        (b'"acme"', "got str"),
        (b"null", "got NoneType"),
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"bad tenant": "shard-a"}', "'bad tenant'"),
        (b'{"": "shard-a"}', "entry ''"),
        (b'{"' + b"t" * 65 + b'": "shard-a"}', f"'{'t' * 64}'…(65 chars)"),
        (b'{"acme": "shard a"}', "'shard a'"),
        (b'{"acme": 7}', "shard id 7"),
        (b'{"acme": null}', "shard id None"),
        (b'{"acme": "s1", "acme": "s2"}', "'acme' appears more than once"),
        (b'{"ok": "s1", "t\\u00e9": "s1"}', "'t\u00e9'"),
    ],
)
def test_invalid_maps_name_the_bad_entry(raw: bytes, names: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        parse_placement(raw)
    assert names in caught.value.message


def test_validate_refuses_non_string_keys() -> None:
    with pytest.raises(InvalidArgumentError, match="entry 3"):
        validate_placement({3: "shard-a"})


def test_decision_without_map_hosts_everyone() -> None:
    decision = PlacementDecision("shard-a")
    assert decision.hosts("anyone")
    assert decision.owner_of("anyone") is None


def test_decision_with_map() -> None:
    placement = validate_placement({**THREE, "tenant-3": "shard-b"})
    a = PlacementDecision("shard-a", placement)
    b = PlacementDecision("shard-b", placement)
    assert a.hosting("acme") is Hosting.HOSTED
    assert a.hosting("globex") is Hosting.ELSEWHERE
    assert b.hosting("tenant-3") is Hosting.HOSTED
    assert a.hosting("tenant-3") is Hosting.ELSEWHERE
    # A shard the map does not name hosts only what nobody places elsewhere: nothing.
    stranger = PlacementDecision("shard-z", placement)
    assert not any(stranger.hosts(t) for t in TENANTS[:300])


def test_every_tenant_has_exactly_one_host() -> None:
    placement = validate_placement({**THREE, "tenant-7": "shard-c"})
    nodes = [PlacementDecision(s, placement) for s in ("shard-a", "shard-b", "shard-c")]
    for tenant in TENANTS[:2000]:
        assert sum(node.hosts(tenant) for node in nodes) == 1, tenant


def test_allowlist_narrows_hosting() -> None:
    placement = validate_placement(THREE)
    decision = PlacementDecision("shard-a", placement).with_hosted_tenants(["acme", "globex"])
    assert decision.hosting("acme") is Hosting.HOSTED
    # Placement says elsewhere: that answer (with an owner to go to) wins over the allowlist.
    assert decision.hosting("globex") is Hosting.ELSEWHERE
    assert decision.hosting("tenant-3") is Hosting.NOT_ALLOWED
    assert decision.with_hosted_tenants(None).hosts("tenant-3")
    assert decision.named_tenants() == frozenset({"acme", "globex", "initech"})
    assert decision.with_placement(None).hosting("globex") is Hosting.HOSTED


@pytest.mark.parametrize("bad", [["ok", "not ok"], "acme", [None]])
def test_allowlist_validation(bad: object) -> None:
    with pytest.raises(InvalidArgumentError):
        PlacementDecision("shard-a").with_hosted_tenants(bad)  # type: ignore[arg-type]


def test_shard_id_is_validated() -> None:
    with pytest.raises(InvalidArgumentError, match="shard id"):
        PlacementDecision("bad shard")


def test_placement_map_of_copies() -> None:
    entries = {"acme": "shard-a"}
    placement = PlacementMap.of(entries)
    entries.clear()
    assert placement.owner_of("acme") == "shard-a"
