"""Upstream FHIR servers: pooled clients, credentials and routing."""

from proxy.upstream.client import BufferedResponse, Upstream, UpstreamStream
from proxy.upstream.credentials import UpstreamCredentials, credentials_for
from proxy.upstream.routing import UpstreamRouter

__all__ = [
    "BufferedResponse",
    "Upstream",
    "UpstreamCredentials",
    "UpstreamRouter",
    "UpstreamStream",
    "credentials_for",
]
