"""What one proxy process holds for its lifetime: settings, upstream pools, the URL rewriter, Redis."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis.asyncio as aioredis

from proxy.fhir.urls import BaseUrlRewriter
from proxy.settings import Settings
from proxy.upstream import Upstream, UpstreamRouter

__all__ = ["ProxyState"]


@dataclass
class ProxyState:
    """Long-lived resources; opened and closed by the application lifespan."""

    settings: Settings
    router: UpstreamRouter = field(init=False)
    rewriter: BaseUrlRewriter = field(init=False)
    redis: aioredis.Redis | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.router = UpstreamRouter(self.settings.upstreams)
        self.rewriter = BaseUrlRewriter(upstream.base_url for upstream in self.router.upstreams)

    async def open(self) -> None:
        """Open connection pools."""
        await self.router.start()
        if self.settings.redis.url:
            self.redis = aioredis.Redis.from_url(
                self.settings.redis.url, socket_timeout=2.0, socket_connect_timeout=2.0
            )

    async def close(self) -> None:
        """Close connection pools."""
        await self.router.close()
        if self.redis is not None:
            await self.redis.aclose()

    def upstream_names(self) -> list[str]:
        return [upstream.name for upstream in self.router.upstreams]

    def router_by_name(self, name: str) -> Upstream:
        return next(upstream for upstream in self.router.upstreams if upstream.name == name)
