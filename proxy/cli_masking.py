"""The masking commands of ``fhirwall``: ``mask`` (offline files) and ``import-anonymizer-config``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import yaml

from masking.builtin import builtin_profile_names, load_builtin_profile
from masking.compiler import CompiledProfile, compile_profile
from masking.keys import KeySource, resolve_keys
from masking.offline import FileMaskingError, MaskJob, Progress, input_files
from masking.profile import Profile, ProfileError, load_profile, profile_schema_text
from proxy.settings import ConfigError

__all__ = ["add_masking_commands"]


def add_masking_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``mask`` and ``import-anonymizer-config``."""
    mask = commands.add_parser("mask", help="mask a FHIR file, NDJSON export or folder with a profile")
    mask.add_argument(
        "--profile", "-p", required=True, help=f"profile file, or one of {builtin_profile_names()}"
    )
    mask.add_argument("input", type=Path, help="a .json resource/Bundle, an .ndjson file, or a folder")
    mask.add_argument("output", type=Path, nargs="?", help="output file or folder (default: standard output)")
    mask.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="NAME=SOURCE",
        help="a key the profile names: NAME=env:VAR, NAME=file:PATH or NAME=value:TEXT (add :base64/:hex)",
    )
    mask.add_argument(
        "--keys-file", type=Path, help="YAML mapping of key names to {env|file|value, encoding}"
    )
    mask.add_argument("--today", type=date.fromisoformat, help="pin the date ages are computed from")
    mask.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar")
    mask.set_defaults(handler=_mask)

    schema = commands.add_parser("profile-schema", help="print the JSON Schema of masking profile files")
    schema.set_defaults(handler=_profile_schema)

    imp = commands.add_parser(
        "import-anonymizer-config", help="convert a Microsoft FHIR anonymizer config into a fhirwall profile"
    )
    imp.add_argument("config", type=Path, help="the anonymizer's JSON configuration")
    imp.add_argument("output", type=Path, nargs="?", help="profile YAML to write (default: standard output)")
    imp.add_argument("--name", help="profile name (default: from the file name)")
    imp.set_defaults(handler=_import_config)


def _mask(args: argparse.Namespace) -> int:
    problems: list[tuple[str, str]] = []
    keys = _keys(args.key, args.keys_file, problems)
    profile = _profile(args.profile, problems)
    compiled: CompiledProfile | None = None
    if profile is not None and not problems:  # a key problem explains the missing-key errors it causes
        try:
            compiled = compile_profile(profile, keys, source=args.profile)
        except ProfileError as error:
            problems += error.problems
    source: Path = args.input
    problems += _paths_problems(source, args.output)
    if problems or compiled is None:
        raise ConfigError(problems)
    job = MaskJob(compiled, today=args.today)
    show = sys.stderr.isatty() if args.progress is None else args.progress
    started = time.perf_counter()
    try:
        with _progress(_total_bytes(source), show) as advance:
            if source.is_dir():
                job.mask_tree(source, args.output, advance)
            else:
                job.mask_file(source, args.output, advance)
    except FileMaskingError as error:
        print(f"fhirwall mask: {error}", file=sys.stderr)
        return 1
    stats = job.stats
    elapsed = time.perf_counter() - started
    print(
        f"masked {stats.resources} resources ({stats.changed} changed, {stats.dropped} dropped) "
        f"with {compiled.name} in {elapsed:.1f} s",
        file=sys.stderr,
    )
    return 0


def _profile(name_or_path: str, problems: list[tuple[str, str]]) -> Profile | None:
    """The profile file or built-in profile; ``problems`` gets what is wrong with it."""
    path = Path(name_or_path)
    try:
        if path.is_file():
            return load_profile(path)
        if name_or_path in builtin_profile_names() or not _looks_like_path(name_or_path):
            return load_builtin_profile(name_or_path)
        problems.append(
            ("--profile", f"no profile file {name_or_path} (and no built-in profile of that name)")
        )
    except KeyError as error:
        problems.append(("--profile", str(error.args[0])))
    except ProfileError as error:
        problems += [(f"{error.source}: {where}", message) for where, message in error.problems]
    return None


def _looks_like_path(name: str) -> bool:
    return "/" in name or "\\" in name or name.endswith((".yaml", ".yml", ".json"))


def _paths_problems(source: Path, output: Path | None) -> list[tuple[str, str]]:
    if not source.exists():
        return [("input", f"not found: {source}")]
    if source.is_dir():
        if output is None:
            return [("output", "masking a folder needs an output folder")]
        if output.exists() and not output.is_dir():
            return [("output", f"{output} is a file; masking a folder needs an output folder")]
    elif output is not None and output.is_dir():
        return [("output", f"{output} is a folder; masking a file needs an output file")]
    return []


def _keys(pairs: list[str], keys_file: Path | None, problems: list[tuple[str, str]]) -> dict[str, bytes]:
    sources: dict[str, KeySource] = {}
    if keys_file is not None:
        try:
            raw = yaml.safe_load(keys_file.read_text(encoding="utf-8")) or {}
            sources.update({name: KeySource.model_validate(spec) for name, spec in raw.items()})
        except (OSError, yaml.YAMLError, ValueError, AttributeError) as exc:
            problems.append(("--keys-file", f"cannot use {keys_file}: {type(exc).__name__}"))
    for pair in pairs:
        name, equals, spec = pair.partition("=")
        kind, _, rest = spec.partition(":")
        text, _, encoding = rest.rpartition(":") if rest.endswith((":base64", ":hex")) else (rest, "", "utf8")
        if not name or not equals or kind not in ("env", "file", "value") or not text:
            # Never echo what was given: a mistyped --key may be the secret itself.
            shown = f"{name}=..." if equals and name.isprintable() and len(name) <= 64 else "something else"
            problems.append(
                ("--key", f"expected NAME=env:VAR, NAME=file:PATH or NAME=value:TEXT, got {shown}")
            )
            continue
        sources[name] = KeySource.model_validate({kind: text, "encoding": encoding})
    keys, failures = resolve_keys(sources)
    problems += [(f"key {name}", message) for name, message in failures]
    return keys


def _total_bytes(source: Path) -> int:
    files = input_files(source) if source.is_dir() else [source]
    return sum(path.stat().st_size for path in files)


@contextmanager
def _progress(total: int, show: bool) -> Iterator[Progress | None]:
    """A rich progress bar over input bytes (compressed files advance by uncompressed bytes)."""
    if not show:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, TimeRemainingColumn
    from rich.progress import Progress as Bar

    columns = ("[progress.description]masking", BarColumn(), DownloadColumn(), TimeRemainingColumn())
    # On standard error: standard output may be the masked data.
    with Bar(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("mask", total=total or None)
        yield lambda size: bar.advance(task, size)


def _profile_schema(args: argparse.Namespace) -> int:
    sys.stdout.write(profile_schema_text())
    return 0


def _import_config(args: argparse.Namespace) -> int:
    from masking.anonymizer_import import AnonymizerImportError, dump_profile_yaml, import_anonymizer_config

    try:
        data = json.loads(args.config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError([("config", f"cannot read {args.config}: {exc}")]) from None
    name = args.name or args.config.stem.lower().replace("_", "-")
    try:
        profile, warnings = import_anonymizer_config(data, name=name)
    except AnonymizerImportError as error:
        raise ConfigError([("config", problem) for problem in error.problems]) from None
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    text = dump_profile_yaml(profile, header=warnings)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0
