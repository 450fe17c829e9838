"""Cohort keys, segment rules and the decision, table-driven."""

from __future__ import annotations

import ipaddress
import random
from dataclasses import replace

import pytest

from proxy.config.model import (
    AttributeCondition,
    ClientIpCondition,
    Cohort,
    KeySource,
    Missing,
    PathPrefixCondition,
    Ramp,
    Route,
    Segment,
    Source,
    Upstream,
    UserIdCondition,
    Variant,
)
from proxy.routing import (
    ActiveRoute,
    Decision,
    Reason,
    RolloutTerms,
    SegmentIndex,
    bucket,
    compile_condition,
    decide,
)
from proxy.routing.cohort import cohort_key
from tests.support.request_facts import Facts, user

NOW = 1_796_083_200.0
HEADER_UID = KeySource(Source.HEADER, "X-User-Id")
COOKIE_UID = KeySource(Source.COOKIE, "uid")
QUERY_USER = KeySource(Source.QUERY, "user")


def make_route(
    share: float = 0.5, segments: tuple[Segment, ...] = (), missing: Missing = Missing.STABLE
) -> Route:
    return Route(
        name="r",
        path_prefix="/",
        stable=Upstream("http://127.0.0.1:1"),
        candidate=Upstream("http://127.0.0.1:2"),
        cohort=Cohort((HEADER_UID, COOKIE_UID, QUERY_USER), "salt-1", missing),
        ramp=Ramp(base=share),
        segments=segments,
    )


# --- cohort key -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (Facts(headers={"x-user-id": "h"}, cookies={"uid": "c"}, params={"user": "q"}), "h"),
        (Facts(cookies={"uid": "c"}, params={"user": "q"}), "c"),
        (Facts(params={"user": "q"}), "q"),
        (Facts(headers={"X-User-Id": ""}, cookies={"uid": "c"}), "c"),  # empty is missing
        (Facts(headers={"X-User-Id": ""}), None),
        (Facts(), None),
    ],
)
def test_cohort_key_takes_first_non_empty_source(facts, expected):
    assert cohort_key(facts, (HEADER_UID, COOKIE_UID, QUERY_USER)) == expected


# --- conditions -------------------------------------------------------------------------------

REGION = AttributeCondition(KeySource(Source.HEADER, "X-Region"), frozenset({"eu-west-1", "eu-2"}))
NETS = ClientIpCondition(
    (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))
)


@pytest.mark.parametrize(
    ("condition", "facts", "key", "expected"),
    [
        (REGION, Facts(headers={"X-Region": "eu-west-1"}), None, True),
        (REGION, Facts(headers={"x-region": "eu-2"}), None, True),
        (REGION, Facts(headers={"X-Region": "EU-WEST-1"}), None, False),  # values are exact
        (REGION, Facts(), None, False),
        (
            AttributeCondition(KeySource(Source.COOKIE, "plan"), frozenset({"pro"})),
            Facts(cookies={"plan": "pro"}),
            None,
            True,
        ),
        (
            AttributeCondition(KeySource(Source.QUERY, "device"), frozenset({"ios"})),
            Facts(params={"device": "android"}),
            None,
            False,
        ),
        (
            AttributeCondition(KeySource(Source.QUERY, "device"), frozenset({"ios"})),
            Facts(params={"device": "ios"}),
            None,
            True,
        ),
        (PathPrefixCondition(("/v1/a", "/v2")), Facts(path="/v2/x"), None, True),
        (PathPrefixCondition(("/v1/a",)), Facts(path="/v1/b"), None, False),
        (NETS, Facts(client_ip="10.1.2.3"), None, True),
        (NETS, Facts(client_ip="2001:db8::7"), None, True),
        (NETS, Facts(client_ip="192.168.0.1"), None, False),
        (NETS, Facts(client_ip=None), None, False),
        (NETS, Facts(client_ip="not-an-ip"), None, False),
        (UserIdCondition(frozenset({"alice"})), Facts(), "alice", True),
        (UserIdCondition(frozenset({"alice"})), Facts(), "bob", False),
        (UserIdCondition(frozenset({"alice"})), Facts(), None, False),
    ],
)
def test_condition_matches(condition, facts, key, expected):
    assert compile_condition(condition)(facts, key) is expected


def test_segment_needs_all_when_and_no_unless():
    seg = Segment(
        "eu-not-staff",
        when=(REGION,),
        unless=(UserIdCondition(frozenset({"ops"})),),
        ramp=Ramp(base=0.2),
    )
    eu = {"X-Region": "eu-west-1"}
    index = SegmentIndex([seg])
    assert index.match(Facts(headers=eu), "u1") is index.segments[0]
    assert index.match(Facts(headers=eu), "ops") is None
    assert index.match(Facts(), "u1") is None


@pytest.mark.parametrize(
    ("network", "inside", "outside"),
    [
        ("10.0.0.0/8", ("10.0.0.0", "10.255.255.255"), ("9.255.255.255", "11.0.0.0")),
        ("192.0.2.7/32", ("192.0.2.7",), ("192.0.2.6", "192.0.2.8")),
        (
            "2001:db8::/32",
            ("2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"),
            ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db9::"),
        ),
    ],
)
def test_a_client_ip_block_includes_its_first_and_last_address_and_nothing_beyond(
    network, inside, outside
):
    matches = compile_condition(ClientIpCondition((ipaddress.ip_network(network),)))
    assert [matches(Facts(client_ip=ip), None) for ip in inside] == [True] * len(inside)
    assert [matches(Facts(client_ip=ip), None) for ip in outside] == [False] * len(outside)


def test_an_unless_condition_on_a_header_excludes_matching_requests():
    seg = Segment(
        "eu-not-staff",
        when=(REGION,),
        unless=(AttributeCondition(KeySource(Source.HEADER, "X-Group"), frozenset({"staff"})),),
        ramp=Ramp(base=0.2),
    )
    index = SegmentIndex([seg])
    eu = {"X-Region": "eu-west-1"}
    assert index.match(Facts(headers=eu), "u1") is index.segments[0]
    assert index.match(Facts(headers={**eu, "X-Group": "staff"}), "u1") is None


def test_first_matching_segment_wins():
    first = Segment("a", when=(REGION,), variant=Variant.STABLE)
    second = Segment("b", when=(REGION,), variant=Variant.CANDIDATE)
    index = SegmentIndex([first, second])
    assert index.match(Facts(headers={"X-Region": "eu-2"}), None) is index.segments[0]
    assert index.match(Facts(headers={"X-Region": "us"}), None) is None


# --- decide -----------------------------------------------------------------------------------

STAFF = Segment(
    "staff",
    when=(AttributeCondition(KeySource(Source.HEADER, "X-Group"), frozenset({"staff"})),),
    variant=Variant.CANDIDATE,
)
DENY = Segment("deny", when=(UserIdCondition(frozenset({"vip-1"})),), variant=Variant.STABLE)
EU = Segment("eu", when=(REGION,), ramp=Ramp(base=0.0))


def test_bucket_decides_against_the_share():
    route = make_route(share=0.5)
    for uid in (f"user-{i}" for i in range(200)):
        d = decide(ActiveRoute.of(route), user(uid), RolloutTerms(NOW, NOW))
        expected = Variant.CANDIDATE if bucket("salt-1", uid) < 5000 else Variant.STABLE
        assert (d.variant, d.reason, d.bucket, d.segment) == (
            expected,
            Reason.BUCKET,
            bucket("salt-1", uid),
            None,
        )
        assert d.share == 0.5


def test_pinned_segment_wins_over_bucket_and_share():
    route = make_route(share=0.0, segments=(STAFF,))
    d = decide(
        ActiveRoute.of(route), user("anyone", **{"X-Group": "staff"}), RolloutTerms(NOW, NOW)
    )
    assert (d.variant, d.reason, d.segment, d.bucket) == (
        Variant.CANDIDATE,
        Reason.PINNED,
        "staff",
        None,
    )


def test_deny_list_pins_stable_even_at_full_share():
    route = make_route(share=1.0, segments=(DENY,))
    assert (
        decide(ActiveRoute.of(route), user("vip-1"), RolloutTerms(NOW, NOW)).variant
        is Variant.STABLE
    )
    assert (
        decide(ActiveRoute.of(route), user("vip-2"), RolloutTerms(NOW, NOW)).variant
        is Variant.CANDIDATE
    )


def test_segment_ramp_replaces_route_share():
    route = make_route(share=1.0, segments=(EU,))
    d = decide(
        ActiveRoute.of(route), user("u", **{"X-Region": "eu-west-1"}), RolloutTerms(NOW, NOW)
    )
    assert (d.variant, d.segment, d.share) == (Variant.STABLE, "eu", 0.0)
    assert (
        decide(ActiveRoute.of(route), user("u"), RolloutTerms(NOW, NOW)).variant
        is Variant.CANDIDATE
    )


def test_segment_order_decides_overlaps():
    route = make_route(segments=(DENY, STAFF))
    d = decide(ActiveRoute.of(route), user("vip-1", **{"X-Group": "staff"}), RolloutTerms(NOW, NOW))
    assert (d.variant, d.segment) == (Variant.STABLE, "deny")


@pytest.mark.parametrize(
    ("share", "missing", "expected", "reason"),
    [
        (0.5, Missing.STABLE, Variant.STABLE, Reason.NO_KEY),
        (0.0, Missing.RANDOM, Variant.STABLE, Reason.NO_KEY),
        (1.0, Missing.STABLE, Variant.CANDIDATE, Reason.NO_KEY),  # everyone means everyone
        (1.0, Missing.RANDOM, Variant.CANDIDATE, Reason.NO_KEY),
    ],
)
def test_requests_without_key(share, missing, expected, reason):
    d = decide(
        ActiveRoute.of(make_route(share=share, missing=missing)), Facts(), RolloutTerms(NOW, NOW)
    )
    assert (d.variant, d.reason, d.bucket) == (expected, reason, None)


def test_missing_random_splits_keyless_requests_by_share():
    route = make_route(share=0.3, missing=Missing.RANDOM)
    rng = random.Random(1)
    decisions = [
        decide(ActiveRoute.of(route), Facts(), RolloutTerms(NOW, NOW), rng.random)
        for _ in range(20000)
    ]
    assert all(d.reason is Reason.RANDOM for d in decisions)
    share = sum(d.variant is Variant.CANDIDATE for d in decisions) / len(decisions)
    assert share == pytest.approx(0.3, abs=0.015)


def test_same_user_same_variant_every_time():
    route = make_route(share=0.37)
    for uid in ("a", "b", "c", "d"):
        assert (
            len(
                {
                    decide(ActiveRoute.of(route), user(uid), RolloutTerms(NOW, NOW)).variant
                    for _ in range(50)
                }
            )
            == 1
        )


def test_rollout_start_applies_to_ramps_without_start():
    route = make_route(share=1.0)
    assert (
        decide(ActiveRoute.of(route), user("u"), RolloutTerms(NOW, NOW - 1)).variant
        is Variant.STABLE
    )  # not started yet
    assert (
        decide(ActiveRoute.of(route), user("u"), RolloutTerms(NOW, NOW)).variant
        is Variant.CANDIDATE
    )


@pytest.mark.parametrize("forced", [Variant.STABLE, Variant.CANDIDATE])
def test_forced_variant_beats_segments_and_keys(forced):
    route = ActiveRoute.of(make_route(share=0.5, segments=(STAFF, DENY)))
    for facts in (user("vip-1"), user("x", **{"X-Group": "staff"}), Facts(), user("u-7")):
        d = decide(route, facts, RolloutTerms(NOW, NOW, forced=forced))
        assert (d.variant, d.reason, d.segment) == (forced, Reason.ROLLOUT, None)


def test_share_override_replaces_route_ramp_but_not_segments():
    route = ActiveRoute.of(make_route(share=0.0, segments=(STAFF, EU)))
    control = RolloutTerms(NOW, NOW, share=1.0)
    assert decide(route, user("u"), control).variant is Variant.CANDIDATE
    eu = decide(route, user("u", **{"X-Region": "eu-west-1"}), control)
    assert (eu.variant, eu.segment) == (Variant.STABLE, "eu")  # the segment's own ramp (0%)
    assert decide(route, user("u", **{"X-Group": "staff"}), control).reason is Reason.PINNED


def test_ramp_clock_drives_the_share():
    route = ActiveRoute.of(replace(make_route(), ramp=Ramp(base=0.0, slope=1.0, per=100.0)))
    assert decide(route, user("u"), RolloutTerms(NOW, NOW + 50)).share == pytest.approx(0.5)
    assert decide(route, user("u"), RolloutTerms(NOW - 100, NOW + 50)).share == 1.0


def test_decision_keeps_the_key_for_hashing_only_when_there_is_one():
    route = ActiveRoute.of(make_route())
    assert decide(route, user("alice"), RolloutTerms(NOW, NOW)).key == "alice"
    assert decide(route, Facts(), RolloutTerms(NOW, NOW)).key is None


# --- exact decisions at the edges -------------------------------------------------------------

# Users of make_route() (salt "salt-1") whose buckets sit at the threshold of a 50 % share, found
# by searching the ids user-0, user-1, ...; test_buckets_of_the_edge_users_are_pinned checks them.
AT_HALF = "user-2486"  # bucket 5000: the threshold of share 0.5
BELOW_HALF = "user-9883"  # bucket 4999
EU_FULL = Segment("eu", when=(REGION,), ramp=Ramp(base=1.0))
EU_HALF = Segment("eu", when=(REGION,), ramp=Ramp(base=0.5))
FROM_EU = {"X-Region": "eu-west-1"}


def test_buckets_of_the_edge_users_are_pinned():
    assert (bucket("salt-1", AT_HALF), bucket("salt-1", BELOW_HALF)) == (5000, 4999)


def test_a_user_whose_bucket_equals_the_threshold_stays_on_stable():
    route = ActiveRoute.of(make_route(share=0.5))
    assert decide(route, user(AT_HALF), RolloutTerms(NOW, NOW)) == Decision(
        Variant.STABLE, Reason.BUCKET, 0.5, None, 5000, AT_HALF
    )


def test_a_user_whose_bucket_is_one_below_the_threshold_gets_the_candidate():
    route = ActiveRoute.of(make_route(share=0.5))
    assert decide(route, user(BELOW_HALF), RolloutTerms(NOW, NOW)) == Decision(
        Variant.CANDIDATE, Reason.BUCKET, 0.5, None, 4999, BELOW_HALF
    )


@pytest.mark.parametrize(("forced", "share"), [(Variant.CANDIDATE, 1.0), (Variant.STABLE, 0.0)])
def test_a_forced_variant_reports_a_share_of_one_or_zero_and_keeps_the_key_unhashed(forced, share):
    route = ActiveRoute.of(make_route(share=0.5, segments=(STAFF,)))
    assert decide(route, user("u-7"), RolloutTerms(NOW, NOW, forced=forced)) == Decision(
        forced, Reason.ROLLOUT, share, None, None, "u-7"
    )


@pytest.mark.parametrize(
    ("segment", "variant", "share"),
    [(STAFF, Variant.CANDIDATE, 1.0), (DENY, Variant.STABLE, 0.0)],
)
def test_a_pinned_segment_reports_a_share_of_one_or_zero_and_keeps_the_key_unhashed(
    segment, variant, share
):
    route = ActiveRoute.of(make_route(share=0.5, segments=(segment,)))
    facts = user("vip-1", **{"X-Group": "staff"})
    assert decide(route, facts, RolloutTerms(NOW, NOW)) == Decision(
        variant, Reason.PINNED, share, segment.name, None, "vip-1"
    )


def test_a_keyless_request_in_a_segment_at_full_share_gets_the_candidate_under_that_segment():
    route = ActiveRoute.of(make_route(share=0.0, segments=(EU_FULL,)))
    assert decide(route, Facts(headers=FROM_EU), RolloutTerms(NOW, NOW)) == Decision(
        Variant.CANDIDATE, Reason.NO_KEY, 1.0, "eu"
    )


def test_a_keyless_request_in_a_segment_ramp_goes_to_stable_under_that_segment():
    route = ActiveRoute.of(make_route(share=1.0, segments=(EU_HALF,)))
    assert decide(route, Facts(headers=FROM_EU), RolloutTerms(NOW, NOW)) == Decision(
        Variant.STABLE, Reason.NO_KEY, 0.5, "eu"
    )


@pytest.mark.parametrize(
    ("drawn", "bucket_drawn", "variant"),
    [(0.4999, 4999, Variant.CANDIDATE), (0.5, 5000, Variant.STABLE)],
)
def test_a_random_draw_equal_to_the_threshold_goes_to_stable(drawn, bucket_drawn, variant):
    """Under `missing: random` the draw is a bucket too: candidate iff below the threshold."""
    route = ActiveRoute.of(make_route(share=0.0, segments=(EU_HALF,), missing=Missing.RANDOM))
    decision = decide(route, Facts(headers=FROM_EU), RolloutTerms(NOW, NOW), lambda: drawn)
    assert decision == Decision(variant, Reason.RANDOM, 0.5, "eu", bucket_drawn)
