"""The audit commands of ``fhirwall``: ``audit verify``, ``audit query`` and ``audit report``.

``verify`` exits 0 when the log verifies, 1 when it was tampered with (or is damaged), 2 on usage and
configuration problems (``ConfigError``, as every ``fhirwall`` command). Each takes several logs (one per
worker process): ``verify`` checks and reports each file's chain on its own (exit 1 when any fails),
``query`` and ``report`` merge their events by recorded time. ``query`` and ``report`` read the log
without verifying it (run ``verify`` for that) and exit 1 when a line cannot be read.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from masking.keys import KeySource
from proxy.audit.chain import GENESIS, MIN_KEY_BYTES, AuditLogError, VerifyingKey, verify_chain
from proxy.audit.files import log_files, merged_events
from proxy.audit.query import (
    AccessLine,
    client_of,
    decision_of,
    interaction_of,
    patient_access_report,
    patients_of,
    recorded_of,
    select,
    user_of,
)
from proxy.settings import ConfigError

__all__ = ["add_audit_commands", "instant_argument"]

_PEM_PUBLIC = b"-----BEGIN PUBLIC KEY-----"
_FILES_HELP = "the audit logs (JSON lines): files or quoted glob patterns, e.g. one per worker"


def add_audit_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``audit`` with its ``verify``, ``query`` and ``report`` commands."""
    audit = commands.add_parser("audit", help="verify and examine the tamper-evident audit log")
    audit.set_defaults(handler=_usage(audit))
    actions = audit.add_subparsers(title="audit commands")

    verify = actions.add_parser("verify", help="check the hash chain and the signed checkpoints")
    verify.add_argument("file", type=Path, nargs="+", help=_FILES_HELP)
    keys = verify.add_mutually_exclusive_group()
    keys.add_argument("--key-env", metavar="VAR", help="environment variable holding the checkpoint key")
    keys.add_argument(
        "--key-file", type=Path, metavar="PATH", help="file holding the key, or an Ed25519 public key (PEM)"
    )
    verify.add_argument(
        "--key-encoding", choices=["utf8", "base64", "hex"], default="utf8", help="how the key text is read"
    )
    verify.add_argument(
        "--first-prev",
        metavar="HEX|any",
        help="the prev of the first record when the file continues an earlier one (default: 64 zeros)",
    )
    verify.set_defaults(handler=_verify)

    query = actions.add_parser("query", help="list the AuditEvents matching filters")
    query.add_argument("file", type=Path, nargs="+", help=_FILES_HELP)
    query.add_argument("--patient", metavar="ID", help="patient id (or Patient/ID)")
    query.add_argument("--user", metavar="REF", help="user reference (Practitioner/123) or identifier")
    query.add_argument("--client", metavar="ID", help="client application id")
    query.add_argument(
        "--since", metavar="ISO", help="recorded at or after this date or instant (UTC if no zone)"
    )
    query.add_argument("--until", metavar="ISO", help="recorded before this date or instant (UTC if no zone)")
    query.add_argument("--decision", choices=["permit", "deny", "not-evaluated"])
    query.add_argument("--outcome", choices=["0", "4", "8", "12"], help="AuditEvent outcome code")
    query.add_argument("--format", choices=["table", "ndjson"], default="table")
    query.set_defaults(handler=_query)

    report = actions.add_parser("report", help="who accessed a patient's data")
    report.add_argument("file", type=Path, nargs="+", help=_FILES_HELP)
    report.add_argument("--patient", metavar="ID", required=True, help="patient id (or Patient/ID)")
    report.add_argument("--format", choices=["table", "json"], default="table")
    report.set_defaults(handler=_report)


def _usage(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def show(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show


# -- verify ------------------------------------------------------------------------------------------------


def _verify(args: argparse.Namespace) -> int:
    paths = log_files(args.file)
    key = _key(args, os.environ)
    first_prev = _first_prev(args.first_prev)
    results = [_verify_file(path, key, first_prev) for path in paths]
    if len(paths) > 1:
        failed = results.count(False)
        print(f"{len(paths)} log(s): {'all OK' if not failed else f'{failed} TAMPERED OR DAMAGED'}")
    return 0 if all(results) else 1


def _verify_file(path: Path, key: VerifyingKey | None, first_prev: str | None) -> bool:
    """Verify one log's chain and print its report; whether it verified."""
    try:
        report = verify_chain(path, key=key, first_prev=first_prev)
    except OSError as exc:
        raise ConfigError([("file", f"cannot read {path}: {exc.strerror}")]) from None
    verdict = "OK" if report.ok else f"TAMPERED OR DAMAGED ({len(report.problems)} problem(s))"
    print(f"{path}: {verdict}: {report.records} record(s), {report.checkpoints} checkpoint(s)")
    if report.last_hash is not None:
        print(f"  last record: seq {report.last_seq}, hash {report.last_hash}")
    for problem in report.problems:
        print(f"  problem: {problem}")
    for warning in report.warnings:
        print(f"  warning: {warning}")
    return report.ok


def _key(args: argparse.Namespace, environ: Mapping[str, str]) -> VerifyingKey | None:
    if args.key_env is None and args.key_file is None:
        return None
    if args.key_file is not None:
        flag = "--key-file"
        try:
            head = args.key_file.read_bytes()[: len(_PEM_PUBLIC)]
        except OSError as exc:
            raise ConfigError([(flag, f"cannot read key file {args.key_file}: {exc.strerror}")]) from None
        if head == _PEM_PUBLIC:
            return _public_key(args.key_file)
        source = KeySource(file=args.key_file, encoding=args.key_encoding)
    else:
        flag = "--key-env"
        source = KeySource(env=args.key_env, encoding=args.key_encoding)
    try:
        key = source.read(environ)
    except ValueError as exc:  # the message never holds the key
        raise ConfigError([(flag, str(exc))]) from None
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            [(flag, f"the key is shorter than {MIN_KEY_BYTES} bytes, so it is not the log's key")]
        )
    return key


def _public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = load_pem_public_key(path.read_bytes())
    except (OSError, ValueError):
        raise ConfigError([("--key-file", f"{path} is not a readable PEM public key")]) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError([("--key-file", f"{path} is a {type(key).__name__}; an Ed25519 key is needed")])
    return key


def _first_prev(text: str | None) -> str | None:
    if text is None:
        return GENESIS
    if text == "any":
        return None
    if len(text) != 64 or any(char not in "0123456789abcdef" for char in text):
        raise ConfigError([("--first-prev", "expected 64 lowercase hex digits or 'any'")])
    return text


# -- query and report --------------------------------------------------------------------------------------


def _query(args: argparse.Namespace) -> int:
    paths = log_files(args.file)
    since = instant_argument("--since", args.since)
    until = instant_argument("--until", args.until)
    selected = select(
        merged_events(paths),
        patient=args.patient,
        user=args.user,
        client=args.client,
        since=since,
        until=until,
        decision=args.decision,
        outcome=args.outcome,
    )
    try:
        if args.format == "ndjson":
            count = 0
            for count, event in enumerate(selected, 1):  # noqa: B007 - count is read after the loop
                sys.stdout.write(orjson.dumps(event).decode() + "\n")
        else:
            rows = [_event_row(event) for event in selected]
            count = len(rows)
            _print_table(
                ("recorded", "user", "client", "interaction", "patients", "decision", "outcome"), rows
            )
    except (AuditLogError, OSError) as error:
        print(f"fhirwall audit query: {_message(error)}", file=sys.stderr)
        return 1
    print(f"{count} event(s)", file=sys.stderr)
    return 0


def _report(args: argparse.Namespace) -> int:
    paths = log_files(args.file)
    try:
        lines = patient_access_report(merged_events(paths), args.patient)
    except (AuditLogError, OSError) as error:
        print(f"fhirwall audit report: {_message(error)}", file=sys.stderr)
        return 1
    if args.format == "json":
        sys.stdout.write(
            orjson.dumps([_line_json(line) for line in lines], option=orjson.OPT_INDENT_2).decode()
        )
        sys.stdout.write("\n")
        return 0
    headers = (
        "user",
        "client",
        "purpose",
        "count",
        "first",
        "last",
        "interactions",
        "decisions",
        "break-glass",
    )
    _print_table(headers, [_line_row(line) for line in lines])
    total = sum(line.count for line in lines)
    print(
        f"patient {args.patient}: {total} event(s) by {len(lines)} user/client/purpose group(s)",
        file=sys.stderr,
    )
    return 0


def instant_argument(flag: str, text: str | None) -> datetime | None:
    """An ISO 8601 date or instant given on the command line (UTC when it has no zone); None when absent."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError([(flag, f"expected an ISO 8601 date or instant, got {text!r}")]) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _message(error: Exception) -> str:
    if isinstance(error, OSError):
        return f"{error.filename}: {error.strerror}"
    return str(error)


def _time(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _counts(counts: Mapping[str, int]) -> str:
    return " ".join(f"{name}:{count}" for name, count in counts.items())


def _event_row(event: Mapping[str, Any]) -> tuple[str, ...]:
    recorded = recorded_of(event)
    return (
        _time(recorded) if recorded is not None else str(event.get("recorded", "-")),
        user_of(event) or "-",
        client_of(event) or "-",
        interaction_of(event) or "-",
        ",".join(sorted(patients_of(event))) or "-",
        decision_of(event) or "-",
        str(event.get("outcome", "-")),
    )


def _line_row(line: AccessLine) -> tuple[str, ...]:
    return (
        line.user or "-",
        line.client or "-",
        line.purpose or "-",
        str(line.count),
        _time(line.first),
        _time(line.last),
        _counts(line.interactions),
        _counts(line.decisions),
        str(line.break_glass),
    )


def _line_json(line: AccessLine) -> dict[str, Any]:
    return {
        "user": line.user,
        "client": line.client,
        "purpose": line.purpose,
        "count": line.count,
        "first": None if line.first is None else _time(line.first),
        "last": None if line.last is None else _time(line.last),
        "interactions": line.interactions,
        "decisions": line.decisions,
        "outcomes": line.outcomes,
        "break_glass": line.break_glass,
    }


def _print_table(headers: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> None:
    rows = list(rows)
    widths = [max([len(header), *(len(row[index]) for row in rows)]) for index, header in enumerate(headers)]
    for row in (headers, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
