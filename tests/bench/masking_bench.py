"""Offline masking benchmark: the built-in Safe Harbor profile over Synthea, in-process and through the CLI.

One command, one run (under a minute on two cores)::

    .venv/bin/python tests/bench/masking_bench.py [--data DIR] [--runs 3] [--json out.json]

Four measurements, printed as a table with the targets marked PASS/MISS (printed, never asserted):

a. **engine**: ``CompiledProfile.mask`` over every Synthea transaction Bundle in the data folder
   (``$FHIRWALL_SYNTHEA_DIR``, else the bundles in ``examples/data/synthea-r4``; ``*.json`` and
   ``*.json.gz``), in-process, one thread, warm
   (the profile compiled once, one untimed warm-up pass). Each Bundle is parsed before its timer starts, so
   only masking is timed. Resources are the Bundles' entries. Reported: the median of ``--runs`` runs, once
   with the garbage collector as it is and once with it frozen (``gc.freeze()``) and disabled while masking,
   plus the time per Bundle.
b. **CLI**: ``fhirwall mask`` (``proxy.cli.main``, in-process, warm) on an NDJSON export built from the same
   Bundles, one entry resource per line: end to end, JSON parsing and serialisation, profile compilation
   and file I/O included. Median of ``--runs`` runs after one warm-up run.
c. **peak RSS**: ``fhirwall mask`` as a subprocess on that NDJSON (1x) and on it repeated ten times (10x,
   ids and ``urn:uuid`` references varied per copy, so caches see new values), peak RSS of each child read
   from ``os.wait4`` (``ru_maxrss``) in a small helper process (a child forked from this big process would
   inherit its high-water mark). NDJSON is streamed, so the two should be about the same.

d. **answers**: 50-entry Observation searchsets (one per Bundle, shaped as the proxy serves them: absolute
   ``fullUrl``, ``Patient/<id>`` subjects, a sealed ``next`` link with a fresh random token each time) through
   ``CompiledProfile.mask_json`` with the cache on, as the proxy masks answers: a **hit** (the page seen
   before), a **page miss** (the same resources in another order: each resource is a cache hit, the entry
   array is new) and a **cold miss** (an empty cache). Median of ``--runs`` runs, microseconds per answer.

Keys are fixed bench values (``--key hash=value:... --key date-shift=value:... --key pseudonym=value:...``);
the script prints which of them the profile actually names.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import gzip
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import orjson

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from masking.builtin import load_builtin_profile
from masking.compiler import CompiledProfile, compile_profile
from masking.engine import MaskStats
from masking.profile import Profile
from proxy.cli import main as fhirwall_main

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = Path(os.environ.get("FHIRWALL_SYNTHEA_DIR") or REPO / "examples" / "data" / "synthea-r4")
FALLBACK_DATA = REPO / "examples" / "data" / "synthea-r4"
PROFILE = "safe-harbor"
KEYS = {"hash": "bench-hash", "date-shift": "bench-shift", "pseudonym": "0123456789abcdef0123456789abcdef"}
TODAY = date(2024, 1, 1)  # pinned, so the age-over-89 fallbacks are the same on every run
COPIES = 10
RUNS = 3
SUFFIXES = (".json", ".json.gz")

GOAL_RESOURCES_PER_S = 20_000  # per core
GOAL_RSS_RATIO = 1.25  # "independent of input size": 10x input, at most 25 % more peak RSS

Json = dict[str, Any]


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class BundleFile:
    """One Synthea Bundle: its file name, raw JSON and number of entry resources."""

    name: str
    raw: bytes
    resources: int


def load_bundles(folder: Path) -> list[BundleFile]:
    """Every ``*.json``/``*.json.gz`` Bundle in ``folder`` (sorted by name)."""
    bundles = []
    for path in sorted(p for p in folder.iterdir() if p.name.endswith(SUFFIXES)):
        raw = path.read_bytes()
        if path.name.endswith(".gz"):
            raw = gzip.decompress(raw)
        data = orjson.loads(raw)
        if isinstance(data, dict) and data.get("resourceType") == "Bundle":
            bundles.append(BundleFile(path.name, raw, len(data.get("entry", []))))
    return bundles


def ndjson_lines(bundles: list[BundleFile]) -> list[bytes]:
    """Every entry resource of every Bundle, one compact JSON line each (newline included)."""
    lines = []
    for bundle in bundles:
        for entry in orjson.loads(bundle.raw).get("entry", []):
            if isinstance(entry.get("resource"), dict):
                lines.append(orjson.dumps(entry["resource"]) + b"\n")
    return lines


def write_ndjson(path: Path, lines: list[bytes], copies: int) -> int:
    """``lines`` repeated ``copies`` times, ids and ``urn:uuid`` references varied per copy; returns bytes."""
    with path.open("wb") as out:
        for copy in range(copies):
            tag = b"c%d-" % copy
            for line in lines:
                out.write(
                    line.replace(b'"id":"', b'"id":"' + tag, 1).replace(b"urn:uuid:", b"urn:uuid:" + tag)
                )
    return path.stat().st_size


def key_names(profile: Profile) -> list[str]:
    """The key names the profile's parameters refer to."""
    parameters = profile.parameters
    names = {parameters.crypto_hash_key, parameters.date_shift.key, parameters.encrypt_key}
    names |= set(parameters.pseudonym_keys.values())
    return sorted(name for name in names if name)


def cli_key_args() -> list[str]:
    return [arg for name, value in KEYS.items() for arg in ("--key", f"{name}=value:{value}")]


# --------------------------------------------------------------------------- (a) engine, in-process


@dataclass
class EngineResult:
    """Median run of the in-process measurement, for one garbage collector setting."""

    gc_mode: str
    resources: int
    bundles: int
    run_seconds: list[float]
    per_bundle_ms: dict[str, float] = field(default_factory=dict)  # of the median run

    @property
    def seconds(self) -> float:
        return statistics.median(self.run_seconds)

    @property
    def rate(self) -> float:
        return self.resources / self.seconds


@contextlib.contextmanager
def gc_setting(frozen: bool) -> Iterator[None]:
    """``frozen``: everything allocated so far frozen, and no collection while masking."""
    if not frozen:
        yield
        return
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()
        gc.collect()


def engine_pass(profile: CompiledProfile, bundles: list[BundleFile]) -> dict[str, float]:
    """Mask every Bundle once; seconds per Bundle (parsing before the timer starts)."""
    times: dict[str, float] = {}
    for bundle in bundles:
        resource = orjson.loads(bundle.raw)
        started = time.perf_counter()
        profile.mask(resource, stats=MaskStats(), today=TODAY)
        times[bundle.name] = time.perf_counter() - started
        del resource
    return times


def bench_engine(
    profile: CompiledProfile, bundles: list[BundleFile], runs: int, frozen: bool
) -> EngineResult:
    """Warm-up pass, then ``runs`` timed passes; keeps the per-Bundle times of the median run."""
    engine_pass(profile, bundles)  # warm-up: plans per resource type, caches
    passes = []
    with gc_setting(frozen):
        for _ in range(runs):
            passes.append(engine_pass(profile, bundles))
    totals = [sum(times.values()) for times in passes]
    median_run = passes[totals.index(sorted(totals)[len(totals) // 2])]
    return EngineResult(
        gc_mode="frozen+disabled" if frozen else "enabled",
        resources=sum(b.resources for b in bundles),
        bundles=len(bundles),
        run_seconds=totals,
        per_bundle_ms={name: seconds * 1000 for name, seconds in median_run.items()},
    )


# --------------------------------------------------------------------------- (b) CLI, in-process


@dataclass
class CliResult:
    """Median end-to-end run of ``fhirwall mask`` on the NDJSON export."""

    resources: int
    input_mb: float
    run_seconds: list[float]

    @property
    def seconds(self) -> float:
        return statistics.median(self.run_seconds)

    @property
    def rate(self) -> float:
        return self.resources / self.seconds


def cli_argv(source: Path, target: Path) -> list[str]:
    options = ["--profile", PROFILE, *cli_key_args(), "--today", TODAY.isoformat(), "--no-progress"]
    return ["mask", *options, str(source), str(target)]


def bench_cli(source: Path, target: Path, resources: int, runs: int) -> CliResult:
    """One warm-up run, then ``runs`` timed runs of the CLI entry point in this process."""
    seconds = []
    for attempt in range(runs + 1):
        started = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()) as err:
            code = fhirwall_main(cli_argv(source, target))
        elapsed = time.perf_counter() - started
        if code != 0:
            raise RuntimeError(f"fhirwall mask exited {code}: {err.getvalue().strip()}")
        if attempt:
            seconds.append(elapsed)
    return CliResult(resources, source.stat().st_size / 1e6, seconds)


# --------------------------------------------------------------------------- (c) peak RSS, subprocess


@dataclass
class RssResult:
    """One ``fhirwall mask`` child process: input size, wall time and its own peak RSS."""

    label: str
    resources: int
    input_mb: float
    seconds: float
    peak_rss_mb: float

    @property
    def rate(self) -> float:
        return self.resources / self.seconds


# A child forked from this process starts with this process's resident pages counted (Linux keeps the
# high-water mark across exec), and this process holds every Bundle. So the CLI is started by a small helper
# interpreter that reports the CLI's own peak RSS (os.wait4) and wall time; the floor is the helper's ~10 MB.
_MEASURE = """
import os, subprocess, sys, time
started = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
proc.returncode = os.waitstatus_to_exitcode(status)
print(proc.returncode, usage.ru_maxrss, time.perf_counter() - started)
"""


def run_child(label: str, source: Path, target: Path, resources: int) -> RssResult:
    """Run the CLI as a child process of a small helper; returns its wall time and peak RSS."""
    command = [sys.executable, "-m", "proxy.cli", *cli_argv(source, target)]
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, *command], cwd=REPO, capture_output=True, check=False, timeout=900
    )
    try:
        code, maxrss, seconds = done.stdout.split()
    except ValueError:
        raise RuntimeError(f"measuring {label} failed: {done.stderr.decode().strip()}") from None
    if int(code) != 0:
        raise RuntimeError(f"fhirwall mask ({label}) exited {int(code)}: {done.stderr.decode().strip()}")
    rss_mb = int(maxrss) / (2**20 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux
    return RssResult(label, resources, source.stat().st_size / 1e6, float(seconds), rss_mb)


# --------------------------------------------------------------------------- (d) answers through the cache

PAGE = 50
BASE = "http://fhir.example/r4"


def search_page(bundle: BundleFile) -> Json | None:
    """The first ``PAGE`` Observations of a Synthea Bundle as a searchset (links added per answer)."""
    resources = [entry["resource"] for entry in orjson.loads(bundle.raw).get("entry", [])]
    patient = next((r["id"] for r in resources if r.get("resourceType") == "Patient"), None)
    observations = [r for r in resources if r.get("resourceType") == "Observation"][:PAGE]
    if patient is None or len(observations) < PAGE:
        return None
    entries = []
    for observation in observations:
        served = {key: value for key, value in observation.items() if key != "encounter"}
        served["subject"] = {"reference": f"Patient/{patient}"}
        entries.append({"fullUrl": f"{BASE}/Observation/{served['id']}", "resource": served})
    return {"resourceType": "Bundle", "type": "searchset", "entry": entries}


def answer(page: Json, *, reverse: bool = False) -> bytes:
    """``page`` as served once: a self link and a sealed next link with a fresh random token."""
    token = os.urandom(48).hex()
    links = [
        {"relation": "self", "url": f"{BASE}/Observation?subject=Patient/x&_count={PAGE}"},
        {"relation": "next", "url": f"{BASE}/_page?token={token}"},
    ]
    entries = page["entry"][::-1] if reverse else page["entry"]
    return orjson.dumps(
        {**page, "entry": [{**e, "search": {"mode": "match"}} for e in entries], "link": links}
    )


@dataclass
class AnswerResult:
    """Microseconds per masked 50-entry answer (median run) by cache state."""

    pages: int
    hit_us: float
    page_miss_us: float
    cold_miss_us: float


def _per_answer(profile: CompiledProfile, bodies: list[bytes]) -> float:
    started = time.perf_counter()
    for body in bodies:
        profile.mask_json(body, today=TODAY)
    return (time.perf_counter() - started) / len(bodies) * 1e6


def bench_answers(source: Profile, bundles: list[BundleFile], runs: int) -> AnswerResult | None:
    """Hit, page miss and cold miss per answer; None when no Bundle has 50 Observations."""
    pages = [page for page in map(search_page, bundles) if page is not None]
    if not pages:
        return None
    keys = {name: value.encode() for name, value in KEYS.items()}
    hits, page_misses, cold_misses = [], [], []
    for _ in range(runs):
        profile = compile_profile(source, keys)
        profile.warm()
        profile.enable_cache(10_000)  # the proxy's defaults
        cold_misses.append(_per_answer(profile, [answer(page) for page in pages]))
        hits.append(_per_answer(profile, [answer(page) for page in pages for _ in range(20)]))
        page_misses.append(_per_answer(profile, [answer(page, reverse=True) for page in pages]))
    median = statistics.median
    return AnswerResult(len(pages), median(hits), median(page_misses), median(cold_misses))


def print_answers(result: AnswerResult | None) -> None:
    if result is None:
        print("\n(d) answers: no Bundle has 50 Observations")
        return
    print(
        f"\n(d) 50-entry searchset answers through mask_json with the cache ({result.pages} pages): "
        f"hit {result.hit_us:.0f} us, page miss (resources cached) {result.page_miss_us:.0f} us, "
        f"cold miss {result.cold_miss_us:.0f} us per answer"
    )


# --------------------------------------------------------------------------- report


def status(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_bundles(results: list[EngineResult], bundles: list[BundleFile]) -> None:
    """Time per Bundle (median run) for each garbage collector setting."""
    header = f"{'bundle':<44} {'resources':>9}" + "".join(
        f" {'ms (gc ' + r.gc_mode + ')':>24}" for r in results
    )
    print("\n" + header + "\n" + "-" * len(header))
    for bundle in bundles:
        cells = "".join(f" {r.per_bundle_ms[bundle.name]:>24.1f}" for r in results)
        print(f"{bundle.name[:44]:<44} {bundle.resources:>9}{cells}")
    for r in results:
        times = list(r.per_bundle_ms.values())
        print(
            f"gc {r.gc_mode}: {statistics.mean(times):.1f} ms per Bundle on average "
            f"(median {statistics.median(times):.1f}, min {min(times):.1f}, max {max(times):.1f}); "
            f"{1000 * r.seconds / r.resources:.3f} ms per resource"
        )


def _row(name: str, resources: int, input_mb: float | None, seconds: float, rss_mb: float | None) -> str:
    size = "-" if input_mb is None else f"{input_mb:.1f}"
    rss = "-" if rss_mb is None else f"{rss_mb:.1f}"
    rate = f"{resources / seconds:,.0f}"
    return f"{name:<40} {resources:>9} {size:>9} {seconds:>8.3f} {rate:>12} {rss:>12}"


def print_table(engine: list[EngineResult], cli: CliResult, rss: list[RssResult]) -> None:
    header = f"{'measurement':<40} {'resources':>9} {'input MB':>9} {'seconds':>8} {'resources/s':>12}"
    header += f" {'peak RSS MB':>12}"
    print("\n" + header + "\n" + "-" * len(header))
    for e in engine:
        runs = ", ".join(f"{s:.3f}" for s in e.run_seconds)
        print(_row(f"(a) engine, gc {e.gc_mode}", e.resources, None, e.seconds, None) + f"  runs: {runs} s")
    runs = ", ".join(f"{s:.3f}" for s in cli.run_seconds)
    print(
        _row("(b) CLI in-process, NDJSON 1x", cli.resources, cli.input_mb, cli.seconds, None)
        + f"  runs: {runs} s"
    )
    for r in rss:
        print(
            _row(f"(c) CLI subprocess, NDJSON {r.label}", r.resources, r.input_mb, r.seconds, r.peak_rss_mb)
        )
    print("(a) masking only, Bundles parsed untimed; (b), (c) end to end: parse, mask, serialise, file I/O;")
    print("(c) wall time also includes interpreter start-up, imports and profile compilation")
    ratio = rss[1].peak_rss_mb / rss[0].peak_rss_mb
    print(
        f"peak RSS: {rss[0].peak_rss_mb:.1f} MB on {rss[0].input_mb:.1f} MB, {rss[1].peak_rss_mb:.1f} MB on "
        f"{rss[1].input_mb:.1f} MB (ratio {ratio:.2f})"
    )


def goals(engine: list[EngineResult], cli: CliResult, rss: list[RssResult]) -> list[Json]:
    found: list[Json] = []
    for r in engine:
        found.append(
            {"what": f"(a) engine, gc {r.gc_mode}", "value": r.rate, "target": f">= {GOAL_RESOURCES_PER_S:,}"}
        )
    found.append({"what": "(b) CLI end to end", "value": cli.rate, "target": f">= {GOAL_RESOURCES_PER_S:,}"})
    for item in found:
        item["status"] = status(item["value"] >= GOAL_RESOURCES_PER_S)
    ratio = rss[1].peak_rss_mb / rss[0].peak_rss_mb
    found.append(
        {
            "what": "(c) peak RSS 10x / 1x",
            "value": ratio,
            "target": f"<= {GOAL_RSS_RATIO:.2f}",
            "status": status(ratio <= GOAL_RSS_RATIO),
        }
    )
    return found


def print_goals(found: list[Json]) -> None:
    print(
        f"\nTargets: >= {GOAL_RESOURCES_PER_S:,} resources/s per core (Safe Harbor, Synthea); "
        f"peak RSS independent of input size (10x input: ratio <= {GOAL_RSS_RATIO:.2f})"
    )
    for item in found:
        value = f"{item['value']:,.0f}" if item["value"] >= 100 else f"{item['value']:.2f}"
        print(f"  {item['what']:<30} {value:>10} {item['target']:<10} {item['status']}")


# --------------------------------------------------------------------------- orchestration


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--data", type=Path, help=f"folder of Synthea Bundles (default {DEFAULT_DATA}, else {FALLBACK_DATA})"
    )
    parser.add_argument("--runs", type=int, default=RUNS, help=f"timed runs per measurement (default {RUNS})")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this path")
    args = parser.parse_args(argv)
    if args.data is None:
        args.data = DEFAULT_DATA if DEFAULT_DATA.is_dir() else FALLBACK_DATA
    if not 1 <= args.runs <= 20:
        parser.error("--runs must be between 1 and 20")
    return args


def run(args: argparse.Namespace, tmp: Path) -> Json:
    bundles = load_bundles(args.data)
    if not bundles:
        raise RuntimeError(f"no Bundles (*.json, *.json.gz) in {args.data}")
    source = load_builtin_profile(PROFILE)
    compiled = compile_profile(source, {name: value.encode() for name, value in KEYS.items()})
    resources = sum(b.resources for b in bundles)
    print(f"{PROFILE} over {len(bundles)} Bundles, {resources:,} resources, from {args.data}")
    print(f"keys given: {', '.join(KEYS)}; named by the profile: {', '.join(key_names(source))}")
    print(
        f"python {platform.python_version()}, {os.cpu_count()} CPUs; one thread, median of {args.runs} runs"
    )

    print("\n(a) engine in-process ...", flush=True)
    engine = [bench_engine(compiled, bundles, args.runs, frozen) for frozen in (False, True)]

    lines = ndjson_lines(bundles)
    one, ten, out = tmp / "export-1x.ndjson", tmp / "export-10x.ndjson", tmp / "masked.ndjson"
    write_ndjson(one, lines, 1)
    print("(b) CLI in-process on NDJSON ...", flush=True)
    cli = bench_cli(one, out, len(lines), args.runs)

    print("(c) CLI subprocess peak RSS, 1x and 10x ...", flush=True)
    rss = [run_child("1x", one, out, len(lines))]
    write_ndjson(ten, lines, COPIES)
    rss.append(run_child(f"{COPIES}x", ten, out, len(lines) * COPIES))

    print("(d) searchset answers through the cache ...", flush=True)
    answers = bench_answers(source, bundles, args.runs)

    print_bundles(engine, bundles)
    print_table(engine, cli, rss)
    print_answers(answers)
    found = goals(engine, cli, rss)
    print_goals(found)
    return {
        "meta": {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "data": str(args.data),
            "runs": args.runs,
            "profile": PROFILE,
        },
        "engine": [{**asdict(r), "seconds": r.seconds, "resources_per_s": r.rate} for r in engine],
        "cli": {**asdict(cli), "seconds": cli.seconds, "resources_per_s": cli.rate},
        "rss": [{**asdict(r), "resources_per_s": r.rate} for r in rss],
        "answers": asdict(answers) if answers is not None else None,
        "goals": found,
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fhirwall-mask-bench-") as tmp:
        try:
            report = run(args, Path(tmp))
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130
        except (RuntimeError, OSError) as err:
            print(f"\nerror: {err}", file=sys.stderr)
            return 1
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
