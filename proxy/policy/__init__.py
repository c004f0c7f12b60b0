"""Access policy: what a principal may do, decided as values and enforced by the pipeline."""

from proxy.policy.access import AccessView
from proxy.policy.decision import AccessDecision, ResponseCheck
from proxy.policy.smart import decide, decide_entries

__all__ = ["AccessDecision", "AccessView", "ResponseCheck", "decide", "decide_entries"]
