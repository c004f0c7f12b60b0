"""The built-in Safe Harbor profile on Synthea R4 bundles: nothing identifying survives, intervals do.

Runs on the bundles shipped in ``examples/data/synthea-r4`` and, when ``FHIRWALL_SYNTHEA_DIR`` names a
folder of more Synthea R4 bundles, on those too.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from masking import compile_profile, load_builtin_profile
from masking.compiler import CompiledProfile

REPO = Path(__file__).resolve().parents[2]
KEYS = {"hash": b"safe-harbor-test-hash", "date-shift": b"safe-harbor-test-shift", "pseudonym": b"p" * 32}
TODAY = date(2026, 11, 30)
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
FULL_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")
WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'\-]*")
DATE_KEYS = re.compile(
    r"(?i)(date|period|start|end|time|issued|instant|lastUpdated|recorded|created|authored)"
)


def bundle_files() -> list[Path]:
    folders = [REPO / "examples" / "data" / "synthea-r4"]
    more = os.environ.get("FHIRWALL_SYNTHEA_DIR")
    if more and Path(more).is_dir():
        folders.append(Path(more))
    return sorted(p for folder in folders for p in folder.iterdir() if p.name.endswith((".json", ".json.gz")))


def read(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    return dict(orjson.loads(gzip.decompress(data) if path.suffix == ".gz" else data))


@pytest.fixture(scope="module")
def safe_harbor() -> CompiledProfile:
    return compile_profile(load_builtin_profile("safe-harbor"), KEYS)


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node


def at(node: Any, key: str) -> Iterator[Any]:
    """Every value held under ``key`` anywhere in ``node``."""
    if isinstance(node, dict):
        for name, value in node.items():
            if name == key:
                yield from value if isinstance(value, list) else [value]
            yield from at(value, key)
    elif isinstance(node, list):
        for value in node:
            yield from at(value, key)


def identifying_values(bundle: dict[str, Any]) -> dict[str, set[str]]:
    """What Safe Harbor must remove, by kind (from the original bundle)."""
    names = {
        word
        for name in at(bundle, "name")
        if isinstance(name, dict)
        for key in ("family", "given", "text")
        for part in strings(name.get(key))
        for word in WORD.findall(part)
    }
    addresses = {
        value
        for address in [*at(bundle, "address"), *at(bundle, "valueAddress")]
        if isinstance(address, dict)
        for key in ("line", "city", "district")
        for value in strings(address.get(key))
        if isinstance(value, str) and value != address.get("state")  # a city-state (Berlin) keeps its state
    }
    zips = {
        z
        for address in [*at(bundle, "address"), *at(bundle, "valueAddress")]
        if isinstance(address, dict) and isinstance(z := address.get("postalCode"), str) and z[3:].strip("0-")
    }
    phones = {
        t["value"] for t in at(bundle, "telecom") if isinstance(t, dict) and isinstance(t.get("value"), str)
    }
    identifiers = {
        i["value"]
        for i in at(bundle, "identifier")
        if isinstance(i, dict) and len(str(i.get("value", ""))) >= 6
    }
    ids = {m for text in strings(bundle) for m in UUID.findall(text)}
    ids |= {e["resource"]["id"] for e in bundle.get("entry", []) if "id" in e.get("resource", {})}
    return {
        "name": names,
        "address": addresses,
        "zip": zips,
        "phone": phones,
        "identifier": identifiers,
        "id": ids,
    }


@pytest.mark.parametrize("path", bundle_files(), ids=lambda p: p.name.split("_")[0][:24])
def test_nothing_identifying_survives(path: Path, safe_harbor: CompiledProfile) -> None:
    original = read(path)
    masked = safe_harbor.mask(read(path), today=TODAY)
    assert masked is not None
    texts = set(strings(masked))
    words = {w for text in texts for w in WORD.findall(text)}
    found_ids = {m for text in texts for m in UUID.findall(text)}
    leaks = {}
    for kind, values in identifying_values(original).items():
        pool = found_ids if kind == "id" else (words if kind == "name" else texts | words)
        leaked = sorted(v for v in values if v in pool)
        if kind == "id":
            leaked = sorted(set(leaked) | {v for v in values if any(v in t for t in texts)})
        if leaked:
            leaks[kind] = leaked[:5]
    assert not leaks


def date_values(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], str]]:
    """(location, value) of every full-date string under a date-like key."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str) and DATE_KEYS.search(key) and FULL_DATE.match(value) and key != "id":
                yield (*path, key), value
            else:
                yield from date_values(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from date_values(value, (*path, index))


def lookup(node: Any, location: tuple[Any, ...]) -> Any:
    for step in location:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return None
    return node


@pytest.mark.parametrize(
    "path", [p for p in bundle_files() if "Information" not in p.name], ids=lambda p: p.name[:24]
)
def test_dates_move_but_a_patients_intervals_do_not(path: Path, safe_harbor: CompiledProfile) -> None:
    original = read(path)
    masked = safe_harbor.mask(read(path), today=TODAY)
    assert masked is not None
    offsets: set[int] = set()
    compared = 0
    for location, value in date_values(original):
        after = lookup(masked, location)
        if not isinstance(after, str) or not FULL_DATE.match(after):
            continue  # removed (age over 89) or moved with a list whose earlier items were removed
        assert after != value, location
        offsets.add((date.fromisoformat(after[:10]) - date.fromisoformat(value[:10])).days)
        compared += 1
    assert compared > 20
    assert len(offsets) == 1, sorted(offsets)[:10]
    assert 0 < abs(offsets.pop()) <= 50
