"""Buckets shared by every replica through Redis: one Lua script per request checks and takes atomically.

Keys: ``fhirwall:rl:<rule>:<digest>`` (a hash: ``tokens``, ``at``) expiring once the bucket would be full
again, and ``...:quota`` (``window``, ``count``) expiring at the end of its window. The script reads Redis's
own clock, so replicas with skewed clocks share one timeline. If Redis cannot be reached the backend raises
``LimiterUnavailableError`` (the request is refused unless ``on_backend_failure`` is ``allow``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from proxy.limits.backend import ADMITTED, LimiterUnavailableError, Verdict
from proxy.limits.rules import Limit

__all__ = ["TAKE_SCRIPT", "RedisBackend"]

# KEYS[i] is a bucket (ARGV: 'b', rate, burst, cost) or a quota window (ARGV: 'q', requests, seconds, 1).
# Returns {0} when everything was taken, else {i, wait seconds, what is left in KEYS[i]} and takes nothing.
TAKE_SCRIPT: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local values, worst, wait = {}, 0, 0
for i, key in ipairs(KEYS) do
  local kind, a, b, cost = ARGV[4*i-3], tonumber(ARGV[4*i-2]), tonumber(ARGV[4*i-1]), tonumber(ARGV[4*i])
  local need = 0
  if kind == 'b' then
    local state = redis.call('HMGET', key, 'tokens', 'at')
    local tokens = b
    if state[1] and state[2] then
      tokens = math.min(b, tonumber(state[1]) + math.max(0, now - tonumber(state[2])) * a)
    end
    values[i] = tokens
    if tokens < cost then need = (cost - tokens) / a end
  else
    local window = math.floor(now / b)
    local state = redis.call('HMGET', key, 'window', 'count')
    local count = 0
    if tonumber(state[1]) == window then count = tonumber(state[2]) end
    values[i] = count
    if count + cost > a then need = (window + 1) * b - now end
  end
  if need > wait then worst, wait = i, need end
end
if worst > 0 then
  local left = values[worst]
  if ARGV[4*worst-3] == 'q' then left = tonumber(ARGV[4*worst-2]) - left end
  return {worst, string.format('%.6f', wait), math.floor(left)}
end
for i, key in ipairs(KEYS) do
  local kind, a, b, cost = ARGV[4*i-3], tonumber(ARGV[4*i-2]), tonumber(ARGV[4*i-1]), tonumber(ARGV[4*i])
  if kind == 'b' then
    local left, at = string.format('%.6f', values[i] - cost), string.format('%.6f', now)
    redis.call('HSET', key, 'tokens', left, 'at', at)
    redis.call('PEXPIRE', key, math.ceil(b / a * 1000) + 1000)
  else
    local window = math.floor(now / b)
    redis.call('HSET', key, 'window', string.format('%.0f', window), 'count', values[i] + cost)
    redis.call('PEXPIREAT', key, string.format('%.0f', (window + 1) * b * 1000 + 1000))
  end
end
return {0}
"""


class RedisBackend:
    """The shared backend: every replica pointing at the same Redis charges the same buckets."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._take = redis.register_script(TAKE_SCRIPT)

    async def take(self, limits: Sequence[Limit]) -> Verdict:
        keys, args, owners = _script_input(limits)
        try:
            answer = await self._take(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise LimiterUnavailableError() from exc
        if int(answer[0]) == 0:
            return ADMITTED
        index = int(answer[0]) - 1
        limit, by_quota = owners[index]
        return Verdict(False, float(answer[1]), limit, by_quota, int(answer[2]))


def _script_input(
    limits: Sequence[Limit],
) -> tuple[list[str], list[str | float | int], list[tuple[Limit, bool]]]:
    """The script's KEYS and ARGV for ``limits``, and which limit (bucket or quota) each key belongs to."""
    keys: list[str] = []
    args: list[str | float | int] = []
    owners: list[tuple[Limit, bool]] = []
    for limit in limits:
        keys.append(limit.key)
        args += ["b", repr(limit.rate), limit.burst, limit.cost]
        owners.append((limit, False))
        if limit.quota is not None:
            keys.append(limit.quota_key)
            args += ["q", limit.quota.requests, limit.quota.per_seconds, 1]
            owners.append((limit, True))
    return keys, args, owners
