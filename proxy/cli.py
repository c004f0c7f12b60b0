"""The ``fhirwall`` command: serve, demo, check-config, config-schema, token, mask,
import-anonymizer-config."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from proxy.auth.dev_issuer import PERSONAS, DevIssuer, load_or_create_key
from proxy.cli_audit import add_audit_commands
from proxy.cli_masking import add_masking_commands
from proxy.cli_rights import add_rights_commands
from proxy.cli_rights_review import add_review_commands
from proxy.masking import MaskingPolicy
from proxy.rights.model import access_policy_schema_text, policy_from_settings
from proxy.settings import ConfigError, Settings, load_settings

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fhirwall`` console command."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        result: int = args.handler(args)
    except ConfigError as error:
        _print_problems(error)
        return 2
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fhirwall", description="A fail-closed FHIR compliance proxy.")
    commands = parser.add_subparsers(title="commands")

    serve = commands.add_parser("serve", help="run the proxy")
    _add_serve_flags(serve)
    serve.set_defaults(handler=_serve)

    demo = commands.add_parser(
        "demo", help="run an embedded upstream with synthetic patients behind the proxy"
    )
    demo.add_argument("--port", type=int, default=8080, help="proxy port (default 8080)")
    demo.add_argument("--upstream-port", type=int, default=8090, help="embedded upstream port (default 8090)")
    demo.add_argument(
        "--hospital-port",
        type=int,
        default=8081,
        help="the access-policy scenario's proxy port (default 8081)",
    )
    demo.add_argument("--patients", type=int, default=4, help="synthetic patients to load (default 4, max 6)")
    demo.set_defaults(handler=_demo)

    check = commands.add_parser("check-config", help="validate a configuration file and report every problem")
    check.add_argument("config", type=Path)
    check.set_defaults(handler=_check_config)

    schema = commands.add_parser("config-schema", help="print the JSON Schema of the configuration file")
    schema.set_defaults(handler=_config_schema)

    policy_schema = commands.add_parser(
        "access-policy-schema", help="print the JSON Schema of the access-policy file"
    )
    policy_schema.set_defaults(handler=lambda args: _write(access_policy_schema_text()))

    token = commands.add_parser("token", help="mint a DEVELOPMENT token with the local dev issuer key")
    token.add_argument("--persona", choices=sorted(PERSONAS), help="a demo persona (sets client and scopes)")
    token.add_argument("--scope", help="scopes (instead of a persona's)")
    token.add_argument("--patient", help="patient id for the launch context")
    token.add_argument("--practitioner", help="practitioner id for fhirUser")
    token.add_argument(
        "--claim",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="extra claim, e.g. --claim 'roles=[\"consent-manager\"]'",
    )
    token.add_argument("--issuer", default="http://127.0.0.1:8080/_dev", help="dev issuer URL")
    token.add_argument("--audience", default="http://127.0.0.1:8080/fhir", help="the proxy's FHIR base")
    token.add_argument("--key-file", type=Path, default=Path(".fhirwall-dev/issuer-key.pem"))
    token.add_argument("--lifetime", type=int, default=3600, help="seconds")
    token.set_defaults(handler=_token)
    add_masking_commands(commands)
    add_audit_commands(commands)
    add_rights_commands(commands)
    add_review_commands(commands)
    return parser


def _add_serve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", type=Path, help="YAML configuration file")
    parser.add_argument("--upstream", help="upstream FHIR base URL (the default upstream)")
    parser.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (default 8080)")
    parser.add_argument("--workers", type=int, help="worker processes")
    parser.add_argument("--public-base-url", help="the FHIR base URL clients see")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--issuer", help="trusted JWT issuer (iss) of access tokens")
    parser.add_argument("--jwks-uri", help="the issuer's JWKS URL (with --issuer)")
    parser.add_argument(
        "--audience", action="append", help="accepted token audience (default: the public base)"
    )
    parser.add_argument(
        "--allow-dev-issuer",
        action="store_true",
        help="trust the local DEVELOPMENT issuer key (never in production)",
    )


def serve_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """CLI flags as dotted settings overrides."""
    overrides: dict[str, Any] = {}
    for flag, key in (
        ("host", "server.host"),
        ("port", "server.port"),
        ("workers", "server.workers"),
        ("public_base_url", "server.public_base_url"),
        ("log_level", "server.log_level"),
    ):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    if args.upstream is not None:
        overrides["upstreams"] = [{"name": "default", "url": args.upstream}]
    if (args.issuer is None) != (args.jwks_uri is None):
        raise ConfigError([("--issuer/--jwks-uri", "give both, or neither")])
    if args.issuer is not None:
        overrides["auth.issuers"] = [{"issuer": args.issuer, "jwks_uri": args.jwks_uri}]
    if args.audience:
        overrides["auth.audiences"] = args.audience
    if args.allow_dev_issuer:
        overrides["auth.dev_issuer.enabled"] = True
    return overrides


def _serve(args: argparse.Namespace) -> int:
    from proxy.serve import run_server

    settings = load_settings(args.config, overrides=serve_overrides(args))
    run_server(settings)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from proxy.demo import run_demo

    return run_demo(
        proxy_port=args.port,
        upstream_port=args.upstream_port,
        patients=args.patients,
        hospital_port=args.hospital_port,
    )


def _token(args: argparse.Namespace) -> int:
    issuer = DevIssuer(load_or_create_key(args.key_file), args.issuer.rstrip("/"))
    extra = {name: orjson.loads(value) for name, _, value in (item.partition("=") for item in args.claim)}
    if args.persona:
        persona = PERSONAS[args.persona]
        if persona.patient_context and not args.patient:
            print(f"--patient is required for the {persona.name} persona", file=sys.stderr)
            return 2
        token = issuer.mint_persona(
            persona,
            audience=args.audience,
            patient=args.patient,
            practitioner=args.practitioner,
            lifetime=args.lifetime,
            extra=extra,
        )
    else:
        claims = {"sub": "dev-user", "client_id": "dev-client", "scope": args.scope or "", **extra}
        if args.patient:
            claims["patient"] = args.patient
        token = issuer.mint(claims, audience=args.audience, lifetime=args.lifetime)
    print("development token (trusted only by a proxy started with the dev issuer enabled):", file=sys.stderr)
    print(token)
    return 0


def _check_config(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    profiles = (
        MaskingPolicy.from_settings(settings.masking, warm=False).profiles if settings.masking.enabled else {}
    )
    roles = len(policy_from_settings(settings.access.policy_file).roles) if settings.access.policy_file else 0
    print(
        f"{args.config}: OK ({len(settings.upstreams)} upstream(s), {len(profiles)} masking profile(s), "
        f"{roles} access-policy role(s))"
    )
    return 0


def _config_schema(args: argparse.Namespace) -> int:
    sys.stdout.write(schema_text())
    return 0


def _write(text: str) -> int:
    sys.stdout.write(text)
    return 0


def schema_text() -> str:
    """The configuration JSON Schema as shipped in ``proxy/settings.schema.json``."""
    schema = Settings.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "fhirwall configuration"
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n"


def _print_problems(error: ConfigError) -> None:
    print(f"configuration invalid: {len(error.problems)} problem(s)", file=sys.stderr)
    for path, message in error.problems:
        print(f"  {path}: {message}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
