"""``fhirwall revoke`` and ``fhirwall revocations``, in-process: the file and Redis stores, the store chosen
from the configuration, exit codes (0 done, 1 nothing to lift or store failure, 2 usage and configuration)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
import yaml

from proxy.cli import main
from proxy.cli_rights import _policy_from_settings, add_rights_commands
from proxy.rights.revocation import FileRevocationStore, RedisRevocationStore, Revocation
from tests.cli_runner import run_commands
from tests.conftest import RedisServer
from tests.proxy.rights.support import redis_client

UPSTREAM = "http://127.0.0.1:9/fhir"


def run(argv: Sequence[str]) -> int:
    """What ``proxy.cli.main`` does with these commands registered."""
    return run_commands(add_rights_commands, argv)


def policy_file(folder: Path, revocation_file: Path | None) -> Path:
    document: dict[str, object] = {"roles": {"security-admin": {"administers": ["revocations"]}}}
    if revocation_file is not None:
        document["revocation"] = {"file": str(revocation_file)}
    path = folder / "access-policy.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def stored(path: Path) -> list[Revocation]:
    return asyncio.run(FileRevocationStore(path).all())


def test_revoke_list_and_lift_with_the_file_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    revocations = tmp_path / "revocations.jsonl"
    policy = str(policy_file(tmp_path, revocations))
    assert run(["revoke", "--policy", policy, "--user", "Practitioner/7", "--reason", "left the ward"]) == 0
    assert "revoked user Practitioner/7 indefinitely" in capsys.readouterr().out
    assert (
        run(["revoke", "--policy", policy, "--token", "jti-1", "--reason", "leaked", "--until", "2999-01-01"])
        == 0
    )
    assert "revoked token jti-1 until 2999-01-01T00:00:00Z" in capsys.readouterr().out
    (first, second) = sorted(stored(revocations), key=lambda revocation: revocation.kind)
    assert first.kind == "token"
    assert first.until == 32472144000.0
    assert (second.value, second.reason) == ("Practitioner/7", "left the ward")
    assert second.revoked_by.startswith("cli")

    assert run(["revocations", "--policy", policy]) == 0
    table = capsys.readouterr()
    lines = table.out.splitlines()
    assert lines[0].split() == ["kind", "value", "revoked", "by", "revoked", "at", "until", "state", "reason"]
    assert "Practitioner/7" in lines[1]
    assert "left the ward" in lines[1]
    assert "2 revocation(s)" in table.err

    assert run(["revoke", "--policy", policy, "--user", "Practitioner/7", "--lift"]) == 0
    assert "lifted the revocation of user Practitioner/7" in capsys.readouterr().out
    assert run(["revoke", "--policy", policy, "--user", "Practitioner/7", "--lift"]) == 1
    assert "is not revoked" in capsys.readouterr().err
    assert [revocation.value for revocation in stored(revocations)] == ["jti-1"]


def test_ended_revocations_are_listed_only_with_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    revocations = tmp_path / "revocations.jsonl"
    policy = str(policy_file(tmp_path, revocations))
    ended = Revocation("client", "kiosk", "r", "cli:test", time.time() - 60, time.time() - 1)
    asyncio.run(FileRevocationStore(revocations).revoke(ended))
    assert run(["revocations", "--policy", policy, "--format", "json"]) == 0
    assert capsys.readouterr().out == ""
    assert run(["revocations", "--policy", policy, "--format", "json", "--all"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert orjson.loads(line)["value"] == "kiosk"


def test_redis_store_from_the_flag(redis_server: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["revoke", "--redis-url", redis_server.url, "--client", "rogue-app", "--reason", "abuse"]) == 0
    assert "revoked client rogue-app" in capsys.readouterr().out

    async def check() -> None:
        async with redis_client(redis_server.url) as client:
            (revocation,) = await RedisRevocationStore(client).all()
            assert (revocation.kind, revocation.value) == ("client", "rogue-app")

    asyncio.run(check())
    assert run(["revocations", "--redis-url", redis_server.url, "--format", "json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["reason"] == "abuse"


def test_redis_store_from_the_configuration(tmp_path: Path, redis_server: RedisServer) -> None:
    config = tmp_path / "fhirwall.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "upstreams": [{"name": "default", "url": UPSTREAM}],
                "redis": {"url": redis_server.url},
            }
        )
    )
    assert run(["revoke", "--config", str(config), "--user", "nurse-1", "--reason", "left"]) == 0

    async def check() -> None:
        async with redis_client(redis_server.url) as client:
            assert [r.value for r in await RedisRevocationStore(client).all()] == ["nurse-1"]

    asyncio.run(check())


def test_file_store_from_the_configured_policy(tmp_path: Path) -> None:
    revocations = tmp_path / "revocations.jsonl"
    config = tmp_path / "fhirwall.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "upstreams": [{"name": "default", "url": UPSTREAM}],
                "auth": {"dev_issuer": {"enabled": True, "key_file": str(tmp_path / "key.pem")}},
                "access": {"policy_file": str(policy_file(tmp_path, revocations))},
            }
        )
    )
    assert main(["revoke", "--config", str(config), "--user", "nurse-1", "--reason", "left"]) == 0
    assert [revocation.value for revocation in stored(revocations)] == ["nurse-1"]


def test_policy_from_settings_reads_defensively(tmp_path: Path) -> None:
    assert _policy_from_settings(None) is None
    assert _policy_from_settings(SimpleNamespace()) is None  # type: ignore[arg-type]
    assert _policy_from_settings(SimpleNamespace(access=SimpleNamespace(policy_file=None))) is None  # type: ignore[arg-type]
    path = policy_file(tmp_path, tmp_path / "r.jsonl")
    loaded = _policy_from_settings(SimpleNamespace(access=SimpleNamespace(policy_file=path)))  # type: ignore[arg-type]
    assert loaded is not None
    assert loaded.revocation.file == tmp_path / "r.jsonl"


@pytest.mark.parametrize(
    ("extra", "where", "problem"),
    [
        ([], "--reason", "say why"),
        (["--reason", "r", "--until", "2001-01-01T00:00:00Z"], "--until", "must be in the future"),
        (["--reason", "r", "--until", "tomorrow"], "--until", "not an ISO 8601 instant"),
    ],
)
def test_usage_problems_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], where: str, problem: str
) -> None:
    policy = str(policy_file(tmp_path, tmp_path / "r.jsonl"))
    assert run(["revoke", "--policy", policy, "--user", "u", *extra]) == 2
    out = capsys.readouterr().out
    assert where in out
    assert problem in out
    assert not (tmp_path / "r.jsonl").exists()


def test_no_store_configured_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = str(policy_file(tmp_path, None))
    assert run(["revocations", "--policy", policy]) == 2
    assert "set redis.url (or --redis-url), or revocation.file" in capsys.readouterr().out
    assert run(["revocations"]) == 2
    broken = tmp_path / "broken.yaml"
    broken.write_text("roles: {x: {permissions: [{resources: [Nope], operations: [read]}]}}")
    assert run(["revocations", "--policy", str(broken)]) == 2
    assert "--policy" in capsys.readouterr().out


def test_one_target_is_required(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        run(["revoke", "--reason", "r"])
    assert exited.value.code == 2
    with pytest.raises(SystemExit):
        run(["revoke", "--user", "a", "--client", "b", "--reason", "r"])


def test_store_failure_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = str(policy_file(tmp_path, tmp_path))  # a directory: cannot be read or written as the list
    assert run(["revocations", "--policy", policy]) == 1
    assert "fhirwall revocations: the revocation list cannot be read" in capsys.readouterr().err
    assert run(["revoke", "--policy", policy, "--user", "u", "--reason", "r"]) == 1
