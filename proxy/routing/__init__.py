"""The pure decision core: buckets, ramps, segments and the routing table.

No I/O and no clock reads: time is always an argument. Imports only the standard library, mmh3
and the config types.
"""

from proxy.routing.bucket import BUCKETS, bucket, threshold
from proxy.routing.decide import Decision, Reason, RolloutTerms, current_share, decide, weight_of
from proxy.routing.facts import RequestFacts
from proxy.routing.ramp import ramp_reaches_max, ramp_share
from proxy.routing.segments import CompiledSegment, SegmentIndex, compile_condition
from proxy.routing.table import ActiveRoute, RoutingTable

__all__ = [
    "BUCKETS",
    "ActiveRoute",
    "CompiledSegment",
    "Decision",
    "Reason",
    "RequestFacts",
    "RolloutTerms",
    "RoutingTable",
    "SegmentIndex",
    "bucket",
    "compile_condition",
    "current_share",
    "decide",
    "ramp_reaches_max",
    "ramp_share",
    "threshold",
    "weight_of",
]
