"""The segment index against trying every segment in order (the oracle), and its cost."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.model import (
    AttributeCondition,
    ClientIpCondition,
    Condition,
    KeySource,
    PathPrefixCondition,
    Segment,
    Source,
    UserIdCondition,
    Variant,
)
from proxy.routing import SegmentIndex
from proxy.routing.segments import CompiledSegment
from tests.support.request_facts import Facts

VALUES = ("a", "b", "c")
CONDITIONS: list[Condition] = [
    *(
        AttributeCondition(KeySource(source, name), frozenset(values))
        for source, name in (
            (Source.HEADER, "X-Tier"),
            (Source.HEADER, "x-tier"),  # the same header, spelled otherwise
            (Source.HEADER, "X-Region"),
            (Source.COOKIE, "tier"),
            (Source.QUERY, "tier"),
        )
        for values in (("a",), ("a", "b"), ("c",))
    ),
    UserIdCondition(frozenset({"u1"})),
    UserIdCondition(frozenset({"u1", "u2"})),
    PathPrefixCondition(("/v1/",)),
    ClientIpCondition((ipaddress.ip_network("10.0.0.0/8"),)),
]

conditions = st.lists(st.sampled_from(CONDITIONS), max_size=3).map(tuple)
segment_lists = st.lists(
    st.tuples(conditions.filter(bool), conditions, st.sampled_from(Variant)), max_size=12
).map(
    lambda specs: [
        Segment(f"s{i}", when=when, unless=unless, variant=variant)
        for i, (when, unless, variant) in enumerate(specs)
    ]
)
maybe = st.none() | st.sampled_from(VALUES)


@st.composite
def requests(draw: st.DrawFn) -> tuple[Facts, str | None]:
    headers = {name: value for name in ("X-Tier", "X-Region") if (value := draw(maybe)) is not None}
    cookie, query = draw(maybe), draw(maybe)
    facts = Facts(
        path=draw(st.sampled_from(("/", "/v1/x"))),
        client_ip=draw(st.sampled_from(("10.1.2.3", "192.0.2.1", None))),
        headers=headers,
        cookies={} if cookie is None else {"tier": cookie},
        params={} if query is None else {"tier": query},
    )
    return facts, draw(st.sampled_from((None, "u1", "u2", "u3")))


def first_match(segments: tuple[CompiledSegment, ...], facts: Facts, key: str | None):
    return next((s for s in segments if s.matches(facts, key)), None)


@settings(max_examples=400, deadline=None)
@given(segment_lists, st.lists(requests(), min_size=1, max_size=8))
def test_the_index_finds_the_segment_trying_each_in_order_would(segments, asked):
    index = SegmentIndex(segments)
    for facts, key in asked:
        assert index.match(facts, key) is first_match(index.segments, facts, key)


@dataclass
class CountingFacts(Facts):
    reads: int = 0

    def header(self, name: str) -> str | None:
        self.reads += 1
        return super().header(name)


def test_a_thousand_segments_on_one_header_cost_one_header_read_and_one_segment_tried():
    segments = [
        Segment(
            f"tier-{i}",
            when=(AttributeCondition(KeySource(Source.HEADER, "X-Tier"), frozenset({f"t{i}"})),),
            variant=Variant.CANDIDATE,
        )
        for i in range(1000)
    ]
    index = SegmentIndex(segments)
    unmatched = CountingFacts(headers={"X-Tier": "free"})
    assert index.match(unmatched, None) is None
    assert unmatched.reads == 1
    last = CountingFacts(headers={"x-tier": "t999"})
    assert index.match(last, None) is index.segments[999]
    assert last.reads == 2  # the index's read, then the segment's own condition


def test_segments_without_an_equality_are_tried_in_order_among_the_indexed():
    on_path = Segment("path", when=(PathPrefixCondition(("/v1/",)),), variant=Variant.STABLE)
    tier = AttributeCondition(KeySource(Source.HEADER, "X-Tier"), frozenset({"a"}))
    before = Segment("tier-before", when=(tier,), variant=Variant.CANDIDATE)
    after = Segment("tier-after", when=(tier,), variant=Variant.CANDIDATE)
    index = SegmentIndex([before, on_path, after])
    both = Facts(path="/v1/x", headers={"X-Tier": "a"})
    assert index.match(both, None) is index.segments[0]
    index = SegmentIndex([on_path, after])
    assert index.match(both, None) is index.segments[0]
    assert index.match(Facts(path="/", headers={"X-Tier": "a"}), None) is index.segments[1]
