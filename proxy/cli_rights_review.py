"""``fhirwall access-review``: evidence for the periodic access review from the audit log and the policy.

Reads the log without verifying it (``fhirwall audit verify`` does that). Exits 0 with the report, 2 when
the log or the policy is missing or invalid, or an option is wrong (``ConfigError``, as every command).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from proxy.audit.chain import AuditLogError
from proxy.audit.files import log_files, merged_events
from proxy.cli_audit import instant_argument
from proxy.rights.model import AccessPolicy, AccessPolicyError, load_access_policy
from proxy.rights.review import AccessReview, access_review, review_json, review_text
from proxy.settings import ConfigError

__all__ = ["add_review_commands"]

DEFAULT_DAYS = 90


def add_review_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``access-review``."""
    review = commands.add_parser(
        "access-review",
        help="roles, used and unused rights, dormant accounts and denials for the periodic access review",
    )
    review.add_argument(
        "--log",
        type=Path,
        nargs="+",
        required=True,
        metavar="AUDIT_LOG",
        help="the audit logs: files or quoted glob patterns (one per worker)",
    )
    review.add_argument("--policy", type=Path, required=True, metavar="POLICY", help="the access-policy file")
    review.add_argument(
        "--from", dest="start", metavar="ISO", help=f"period start (default: {DEFAULT_DAYS} days before --to)"
    )
    review.add_argument("--to", dest="end", metavar="ISO", help="period end, exclusive (default: now)")
    review.add_argument(
        "--dormant-days",
        type=int,
        default=DEFAULT_DAYS,
        metavar="N",
        help=f"accounts without a request in the N days before --to are dormant (default {DEFAULT_DAYS})",
    )
    review.add_argument("--format", choices=["text", "json"], default="text")
    review.add_argument("--output", type=Path, metavar="FILE", help="write the report here (default: stdout)")
    review.set_defaults(handler=_access_review)


def _access_review(args: argparse.Namespace) -> int:
    end = instant_argument("--to", args.end) or datetime.now(UTC)
    start = instant_argument("--from", args.start) or end - timedelta(days=DEFAULT_DAYS)
    if start >= end:
        raise ConfigError([("--from", "the period must start before it ends (--to)")])
    if args.dormant_days < 1:
        raise ConfigError([("--dormant-days", "expected a positive number of days")])
    policy = _policy(args.policy)
    review = _review(args.log, policy, start, end, args.dormant_days)
    _emit(_render(review, args.format), args.output)
    return 0


def _policy(path: Path) -> AccessPolicy:
    try:
        return load_access_policy(path)
    except AccessPolicyError as error:
        raise ConfigError([(f"--policy {where}", message) for where, message in error.problems]) from None


def _review(
    names: list[Path], policy: AccessPolicy, start: datetime, end: datetime, dormant_days: int
) -> AccessReview:
    paths = log_files(names, "--log")
    try:
        return access_review(merged_events(paths), policy, start, end, dormant_days=dormant_days)
    except AuditLogError as error:
        raise ConfigError([("--log", str(error))]) from None
    except OSError as error:
        raise ConfigError([("--log", f"cannot read {error.filename}: {error.strerror}")]) from None


def _render(review: AccessReview, form: str) -> str:
    if form == "json":
        return orjson.dumps(review_json(review), option=orjson.OPT_INDENT_2).decode() + "\n"
    return review_text(review)


def _emit(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as error:
        raise ConfigError([("--output", f"cannot write {output}: {error.strerror}")]) from None
    print(f"access review written to {output}", file=sys.stderr)
