"""The revocation commands of ``fhirwall``: ``revoke`` (or lift) a user, client or token, and ``revocations``.

The store is the one the proxy uses: Redis when ``redis.url`` is set (``--redis-url`` overrides), otherwise
the access policy's ``revocation.file``. Exit codes: 0 done, 1 the store failed or there was nothing to lift,
2 usage and configuration problems (``ConfigError``, as every ``fhirwall`` command).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from proxy.errors import InvalidRequestError
from proxy.rights.admin import instant, parse_instant
from proxy.rights.errors import RightsLookupError
from proxy.rights.model import AccessPolicy, AccessPolicyError, load_access_policy, policy_from_settings
from proxy.rights.revocation import (
    FileRevocationStore,
    RedisRevocationStore,
    Revocation,
    RevocationKind,
    RevocationStore,
)
from proxy.settings import ConfigError, Settings, load_settings

__all__ = ["add_rights_commands"]


def add_rights_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``revoke`` and ``revocations``."""
    revoke = commands.add_parser("revoke", help="revoke a user, client or token at once (or lift it)")
    _store_flags(revoke)
    who = revoke.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", metavar="SUB|FHIRUSER", help="token subject or fhirUser (Practitioner/123)")
    who.add_argument("--client", metavar="CLIENT_ID", help="client application id")
    who.add_argument("--token", metavar="JTI", help="one token, by its jti")
    revoke.add_argument("--reason", metavar="TEXT", help="why (required when revoking; no patient data)")
    revoke.add_argument("--until", metavar="ISO8601", help="the revocation ends then (UTC if no zone)")
    revoke.add_argument("--lift", action="store_true", help="lift an earlier revocation instead")
    revoke.set_defaults(handler=_revoke)

    listing = commands.add_parser("revocations", help="list the revocations")
    _store_flags(listing)
    listing.add_argument("--all", action="store_true", help="include revocations whose until has passed")
    listing.add_argument("--format", choices=["table", "json"], default="table")
    listing.set_defaults(handler=_list)


def _store_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", type=Path, help="the proxy's YAML configuration file")
    parser.add_argument("--policy", type=Path, help="the access-policy file (default: access.policy_file)")
    parser.add_argument(
        "--redis-url", metavar="URL", help="Redis holding the revocations (default: redis.url)"
    )


# -- commands ----------------------------------------------------------------------------------------------


def _revoke(args: argparse.Namespace) -> int:
    kind, value = _target(args)
    if args.lift:
        return _run(args, "revoke", lambda store: _lift(store, kind, value))
    if not args.reason or not args.reason.strip():
        raise ConfigError([("--reason", "say why the access is revoked")])
    now = time.time()
    revocation = Revocation(kind, value, args.reason.strip(), _operator(), now, _until(args.until, now))
    return _run(args, "revoke", lambda store: _store(store, revocation))


def _list(args: argparse.Namespace) -> int:
    return _run(
        args, "revocations", lambda store: _show(store, show_all=args.all, as_json=args.format == "json")
    )


async def _store(store: RevocationStore, revocation: Revocation) -> int:
    await store.revoke(revocation)
    ending = f"until {instant(revocation.until)}" if revocation.until is not None else "indefinitely"
    print(f"revoked {revocation.kind} {revocation.value} {ending}")
    return 0


async def _lift(store: RevocationStore, kind: str, value: str) -> int:
    if not await store.lift(kind, value):
        print(f"fhirwall revoke: {kind} {value} is not revoked", file=sys.stderr)
        return 1
    print(f"lifted the revocation of {kind} {value}")
    return 0


async def _show(store: RevocationStore, *, show_all: bool, as_json: bool) -> int:
    now = time.time()
    entries = sorted(await store.all(), key=lambda revocation: revocation.revoked_at)
    shown = [revocation for revocation in entries if show_all or revocation.active(now)]
    if as_json:
        for revocation in shown:
            sys.stdout.write(orjson.dumps(revocation.to_dict()).decode() + "\n")
    else:
        _print_table(
            ("kind", "value", "revoked by", "revoked at", "until", "state", "reason"),
            [_row(revocation, now) for revocation in shown],
        )
    print(f"{len(shown)} revocation(s)", file=sys.stderr)
    return 0


# -- arguments ---------------------------------------------------------------------------------------------


def _target(args: argparse.Namespace) -> tuple[RevocationKind, str]:
    chosen: list[tuple[RevocationKind, str | None]] = [
        ("user", args.user),
        ("client", args.client),
        ("token", args.token),
    ]
    for kind, value in chosen:
        if value is not None:
            if not value.strip():
                raise ConfigError([(f"--{kind}", "must not be empty")])
            return kind, value.strip()
    raise ConfigError([("--user/--client/--token", "name what to revoke")])


def _until(text: str | None, now: float) -> float | None:
    if text is None:
        return None
    try:
        moment = parse_instant(text, "--until")
    except InvalidRequestError as error:
        raise ConfigError([("--until", error.message)]) from None
    if moment <= now:
        raise ConfigError([("--until", "must be in the future")])
    return moment


def _operator() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


# -- the store ---------------------------------------------------------------------------------------------


def _run(
    args: argparse.Namespace, command: str, action: Callable[[RevocationStore], Coroutine[Any, Any, int]]
) -> int:
    """Open the store, run ``action`` on it; a store failure exits 1."""

    async def main() -> int:
        async with _opened_store(args) as store:
            return await action(store)

    try:
        return asyncio.run(main())
    except RightsLookupError as error:
        print(f"fhirwall {command}: {error.message}", file=sys.stderr)
        return 1


@asynccontextmanager
async def _opened_store(args: argparse.Namespace) -> AsyncIterator[RevocationStore]:
    settings = load_settings(args.config) if args.config is not None else None
    redis_url = args.redis_url or (settings.redis.url if settings is not None else None)
    if redis_url:
        client = aioredis.Redis.from_url(redis_url, socket_timeout=5.0, socket_connect_timeout=5.0)
        try:
            yield RedisRevocationStore(client)
        finally:
            await client.aclose()
        return
    policy = _policy_file(args.policy) if args.policy is not None else _policy_from_settings(settings)
    if policy is None or policy.revocation.file is None:
        raise ConfigError(
            [
                (
                    "revocation store",
                    "none configured: set redis.url (or --redis-url), or revocation.file in the access "
                    "policy (access.policy_file or --policy)",
                )
            ]
        )
    yield FileRevocationStore(policy.revocation.file)


def _policy_file(path: Path) -> AccessPolicy:
    try:
        return load_access_policy(path)
    except AccessPolicyError as error:
        raise ConfigError(
            [(f"--policy ({path}) {where}", message) for where, message in error.problems]
        ) from None


def _policy_from_settings(settings: Settings | None) -> AccessPolicy | None:
    """The access policy named by the settings' ``access.policy_file`` (None when there is none)."""
    path = getattr(getattr(settings, "access", None), "policy_file", None)
    return None if path is None else policy_from_settings(Path(path))


# -- output ------------------------------------------------------------------------------------------------


def _row(revocation: Revocation, now: float) -> tuple[str, ...]:
    return (
        revocation.kind,
        revocation.value,
        revocation.revoked_by,
        instant(revocation.revoked_at) or "",
        instant(revocation.until) or "-",
        "active" if revocation.active(now) else "ended",
        revocation.reason,
    )


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    for line in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
