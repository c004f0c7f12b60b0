"""Which upstream serves which resource type."""

from __future__ import annotations

from collections.abc import Iterable

from proxy.errors import NotFoundError, NotSupportedError
from proxy.settings import UpstreamSettings
from proxy.upstream.client import Upstream

__all__ = ["UpstreamRouter"]


class UpstreamRouter:
    """Routes by resource type; system-level requests and unrouted types go to the default upstream."""

    def __init__(self, settings: Iterable[UpstreamSettings]) -> None:
        self.upstreams = [Upstream(item) for item in settings]
        self.default = next(u for u in self.upstreams if "*" in u.settings.resource_types)
        self._by_type = {t: u for u in self.upstreams for t in u.settings.resource_types if t != "*"}

    def for_type(self, resource_type: str | None) -> Upstream:
        """The upstream for ``resource_type`` (the default for None)."""
        if resource_type is None:
            return self.default
        return self._by_type.get(resource_type, self.default)

    def by_name(self, name: str) -> Upstream:
        """The upstream called ``name`` (paging links name theirs)."""
        for upstream in self.upstreams:
            if upstream.name == name:
                return upstream
        raise NotFoundError("the upstream of this paging link is no longer configured")

    def for_types(self, resource_types: Iterable[str | None]) -> Upstream:
        """The single upstream serving all of ``resource_types`` (a batch or transaction)."""
        chosen = {
            self.for_type(resource_type).name: self.for_type(resource_type)
            for resource_type in resource_types
        }
        if len(chosen) > 1:
            raise NotSupportedError(
                "a batch or transaction cannot span resource types served by different upstreams"
            )
        return next(iter(chosen.values()), self.default)

    async def start(self) -> None:
        for upstream in self.upstreams:
            await upstream.start()

    async def close(self) -> None:
        for upstream in self.upstreams:
            await upstream.close()
