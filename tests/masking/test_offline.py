"""``fhirwall mask``: offline masking of resources, Bundles, NDJSON exports and folder trees, end to end.

The real command line runs in-process (``proxy.cli.main``) and, once, as a subprocess. Inputs are a
Synthea transaction Bundle shipped in ``examples/data/synthea-r4`` and small hand-written resources. Checked:
the output is masked (no original names or ids), NDJSON keeps one line per resource (minus the lines a
``skip`` profile drops), folder trees keep their relative paths, failures exit 1 naming file:line but never
the data and leave no output, configuration problems exit 2 listing every problem, ``--today`` pins the age
logic, and the anonymizer's date-shift scopes ``file``/``folder`` give one offset per file/input folder.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from masking.builtin import load_builtin_profile
from masking.compiler import compile_profile
from masking.methods.date_shift import ms_offset
from masking.offline import MaskJob
from proxy.cli import main

REPO = Path(__file__).resolve().parents[2]
SYNTHEA = (
    REPO
    / "examples"
    / "data"
    / "synthea-r4"
    / "Kanisha187_Welch179_b50ae490-7fbf-d2ea-a315-df4fa9c576f6.json.gz"
)
MS_CONFIG = Path(__file__).parent / "data" / "ms-config.json"
HASH_KEY = "test-hash-key"
SHIFT_KEY = "test-date-shift-key"
KEYS = ["--key", f"hash=value:{HASH_KEY}", "--key", f"date-shift=value:{SHIFT_KEY}"]
SECRET_NAME = "Zebulon-Quuxley"  # a name that must never appear in output or messages
Json = dict[str, Any]


# --------------------------------------------------------------------------- helpers


def mask(*args: str | Path, profile: str | Path = "safe-harbor", keys: bool = True) -> int:
    """Run ``fhirwall mask`` in-process; returns the exit code."""
    argv = ["mask", "--profile", str(profile), *(KEYS if keys else []), *(str(arg) for arg in args)]
    return main(argv)


def read_json(path: Path) -> Json:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        loaded: Json = json.loads(handle.read())
    return loaded


def read_ndjson(path: Path) -> list[Json]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        return [json.loads(line) for line in handle.read().splitlines() if line.strip()]


def write_ndjson(path: Path, resources: list[Json], extra_lines: dict[int, bytes] | None = None) -> None:
    """One resource per line; ``extra_lines`` inserts raw lines before the given 0-based index."""
    lines = [json.dumps(resource).encode() for resource in resources]
    for index, raw in sorted((extra_lines or {}).items(), reverse=True):
        lines.insert(index, raw)
    data = b"\n".join(lines) + b"\n"
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def patient(pid: str, family: str = SECRET_NAME, birth: str = "1980-06-15") -> Json:
    return {
        "resourceType": "Patient",
        "id": pid,
        "name": [{"family": family, "given": ["Ada"]}],
        "birthDate": birth,
        "address": [{"line": ["1 Main St"], "city": "Springfield", "state": "MA", "postalCode": "01960"}],
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-12-3456"}],
    }


def observation(oid: str, pid: str, when: str) -> Json:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"text": "heart rate"},
        "subject": {"reference": f"Patient/{pid}", "display": SECRET_NAME},
        "effectiveDateTime": when,
    }


def leftovers(folder: Path) -> list[str]:
    """Files left below ``folder``, relative (temporary ``.partial`` files included)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def assert_masked_patient(masked: Json, original_id: str) -> None:
    assert masked["resourceType"] == "Patient"
    assert masked["id"] != original_id
    assert "name" not in masked
    text = json.dumps(masked)
    assert SECRET_NAME not in text
    assert original_id not in text
    assert "999-12-3456" not in text
    assert "ANONYED" in {label["code"] for label in masked["meta"]["security"]}


@pytest.fixture(scope="module")
def synthea() -> Json:
    if not SYNTHEA.is_file():
        pytest.skip(f"Synthea example bundle missing: {SYNTHEA}")
    return read_json(SYNTHEA)


def synthea_identities(bundle: Json) -> tuple[list[str], list[str]]:
    """The ids of every entry resource and the patient's names (family and given)."""
    ids = [entry["resource"]["id"] for entry in bundle["entry"]]
    person = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    names = [person["name"][0]["family"], *person["name"][0]["given"]]
    return ids, names


# --------------------------------------------------------------------------- inputs of every kind


def test_single_resource(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, target = tmp_path / "patient.json", tmp_path / "masked.json"
    source.write_text(json.dumps(patient("pat-1")))

    assert mask(source, target) == 0

    assert_masked_patient(read_json(target), "pat-1")
    assert "masked 1 resources" in capsys.readouterr().err
    assert leftovers(tmp_path) == ["masked.json", "patient.json"]


def test_synthea_bundle_gz_in_json_out(synthea: Json, tmp_path: Path) -> None:
    target = tmp_path / "bundle.json"

    assert mask(SYNTHEA, target) == 0

    masked = read_json(target)
    assert masked["resourceType"] == "Bundle"
    assert len(masked["entry"]) == len(synthea["entry"])
    ids, names = synthea_identities(synthea)
    text = target.read_text()
    assert [name for name in names if name in text] == []
    assert [i for i in ids if i in text] == []
    # References still resolve inside the masked Bundle: ids are hashed the same way everywhere.
    full_urls = {entry["fullUrl"] for entry in masked["entry"]}
    subjects = {e["resource"]["subject"]["reference"] for e in masked["entry"] if "subject" in e["resource"]}
    assert subjects
    assert subjects <= full_urls


@pytest.mark.parametrize("suffix", [".ndjson", ".ndjson.gz"])
def test_ndjson_line_per_resource(synthea: Json, tmp_path: Path, suffix: str) -> None:
    resources = [entry["resource"] for entry in synthea["entry"]]
    source, target = tmp_path / f"export{suffix}", tmp_path / f"masked{suffix}"
    write_ndjson(source, resources, extra_lines={5: b"", 9: b"   "})  # blank lines are skipped

    assert mask(source, target) == 0

    masked = read_ndjson(target)
    assert len(masked) == len(resources)
    assert [m["resourceType"] for m in masked] == [r["resourceType"] for r in resources]
    ids, names = synthea_identities(synthea)
    text = json.dumps(masked)
    assert [name for name in names if name in text] == []
    assert [i for i in ids if i in text] == []
    if suffix.endswith(".gz"):
        assert target.read_bytes()[:2] == b"\x1f\x8b"


def test_ndjson_skip_profile_drops_only_failing_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = tmp_path / "skip.yaml"
    profile.write_text(
        "name: skip-errors\n"
        "processing_errors: skip\n"
        "parameters: {crypto_hash_key: hash}\n"
        "rules:\n"
        "  - {path: Resource.id, method: cryptoHash}\n"
        "  - {path: nodesByType('HumanName'), method: redact}\n"
    )
    good = [patient(f"p{n}") for n in range(6)]
    bad = {2: b'{"resourceType": "NotAResourceType", "id": "x1"}', 5: b'{"id": "no-type"}'}
    source, target = tmp_path / "in.ndjson", tmp_path / "out.ndjson"
    write_ndjson(source, good, extra_lines=bad)

    assert mask(source, target, profile=profile) == 0

    masked = read_ndjson(target)
    assert len(masked) == len(good)  # 8 lines in, the 2 that cannot be masked dropped
    assert all(m["resourceType"] == "Patient" and "name" not in m for m in masked)
    assert "masked 8 resources (6 changed, 2 dropped)" in capsys.readouterr().err


def test_folder_tree_keeps_relative_paths(synthea: Json, tmp_path: Path) -> None:
    source, target = tmp_path / "export", tmp_path / "masked"
    (source / "a" / "b").mkdir(parents=True)
    (source / "a" / "patient.json").write_text(json.dumps(patient("p-tree")))
    write_ndjson(
        source / "a" / "b" / "Observation.ndjson",
        [observation(f"o{n}", "p-tree", "2020-01-0{n}") for n in range(1, 4)],
    )
    (source / "bundle.json.gz").write_bytes(SYNTHEA.read_bytes())
    write_ndjson(source / "Patient.ndjson.gz", [patient("p-gz")])
    (source / "README.txt").write_text(f"not FHIR, not copied: {SECRET_NAME}")

    assert main(["mask", "--profile", "safe-harbor", *KEYS, str(source), str(target)]) == 0

    assert leftovers(target) == [
        "Patient.ndjson.gz",
        "a/b/Observation.ndjson",
        "a/patient.json",
        "bundle.json.gz",
    ]
    assert_masked_patient(read_json(target / "a" / "patient.json"), "p-tree")
    assert_masked_patient(read_ndjson(target / "Patient.ndjson.gz")[0], "p-gz")
    observations = read_ndjson(target / "a" / "b" / "Observation.ndjson")
    assert len(observations) == 3
    assert all("p-tree" not in json.dumps(o) and SECRET_NAME not in json.dumps(o) for o in observations)
    ids, names = synthea_identities(synthea)
    bundle_text = json.dumps(read_json(target / "bundle.json.gz"))
    assert [name for name in names if name in bundle_text] == []
    assert [i for i in ids if i in bundle_text] == []


def test_stdout_output(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    source = tmp_path / "in.ndjson"
    write_ndjson(source, [patient("p1"), patient("p2")])

    assert mask(source) == 0

    captured = capsysbinary.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 2
    for line, pid in zip(lines, ("p1", "p2"), strict=True):
        assert_masked_patient(json.loads(line), pid)
    assert b"masked 2 resources" in captured.err
    assert leftovers(tmp_path) == ["in.ndjson"]


def test_subprocess_stdout_is_only_data_even_with_progress(tmp_path: Path) -> None:
    """The console entry point as a process; the progress bar goes to stderr, never into the data."""
    source = tmp_path / "in.ndjson.gz"
    write_ndjson(source, [patient(f"p{n}") for n in range(20)])
    command = [
        sys.executable,
        "-m",
        "proxy.cli",
        "mask",
        "-p",
        "safe-harbor",
        *KEYS,
        "--progress",
        str(source),
    ]

    done = subprocess.run(command, capture_output=True, cwd=REPO, timeout=60, check=False)

    assert done.returncode == 0, done.stderr.decode()
    lines = done.stdout.splitlines()
    assert len(lines) == 20
    assert all(json.loads(line)["resourceType"] == "Patient" for line in lines)
    assert SECRET_NAME.encode() not in done.stdout
    assert b"masked 20 resources" in done.stderr


def test_progress_counts_stored_bytes_of_gzip_files(tmp_path: Path) -> None:
    """The bar's total is the files' size on disk, so compressed inputs advance by compressed bytes."""
    source = tmp_path / "in.ndjson.gz"
    write_ndjson(source, [patient(f"p{n}") for n in range(200)])
    job = MaskJob(compile_profile(load_builtin_profile("safe-harbor"), _key_bytes()))
    advanced: list[int] = []

    job.mask_file(source, tmp_path / "out.ndjson", advanced.append)

    assert sum(advanced) == source.stat().st_size
    assert job.stats.resources == 200


# --------------------------------------------------------------------------- failures


def test_invalid_json_line_exits_1_names_line_not_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, target = tmp_path / "bad.ndjson", tmp_path / "out.ndjson"
    broken = b'{"resourceType": "Patient", "id": "p9", "name": [{"family": "' + SECRET_NAME.encode() + b'"'
    write_ndjson(source, [patient("p1"), patient("p2"), patient("p3")], extra_lines={2: broken})

    assert mask(source, target) == 1

    err = capsys.readouterr().err
    assert f"{source}:3: not valid JSON" in err
    assert SECRET_NAME not in err
    assert "p9" not in err
    assert leftovers(tmp_path) == ["bad.ndjson"]  # no output, no .partial file


def test_non_object_line_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, target = tmp_path / "bad.ndjson", tmp_path / "out.ndjson"
    write_ndjson(source, [patient("p1")], extra_lines={1: json.dumps([SECRET_NAME]).encode()})

    assert mask(source, target) == 1

    err = capsys.readouterr().err
    assert f"{source}:2: not a FHIR resource" in err
    assert SECRET_NAME not in err
    assert not target.exists()


def test_failed_run_keeps_the_previous_output(tmp_path: Path) -> None:
    source, target = tmp_path / "bad.ndjson", tmp_path / "out.ndjson"
    write_ndjson(source, [patient("p1")], extra_lines={1: b"{not json"})
    target.write_text("previous run\n")

    assert mask(source, target) == 1

    assert target.read_text() == "previous run\n"
    assert leftovers(tmp_path) == ["bad.ndjson", "out.ndjson"]


def test_failed_folder_run_leaves_no_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, target = tmp_path / "export", tmp_path / "masked"
    (source / "sub").mkdir(parents=True)
    write_ndjson(source / "a.ndjson", [patient("p1")])  # masked first (sorted order), then discarded
    write_ndjson(source / "sub" / "b.ndjson", [patient("p2")], extra_lines={1: b"{oops"})

    assert main(["mask", "--profile", "safe-harbor", *KEYS, str(source), str(target)]) == 1

    assert f"{source / 'sub' / 'b.ndjson'}:2: not valid JSON" in capsys.readouterr().err
    assert not target.exists()


def test_corrupt_gzip_exits_1_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, target = tmp_path / "in.ndjson.gz", tmp_path / "out.ndjson"
    source.write_bytes(gzip.compress(json.dumps(patient("p1")).encode() * 50)[:40])

    assert mask(source, target) == 1

    assert f"{source}: truncated or corrupt gzip data" in capsys.readouterr().err
    assert not target.exists()


# --------------------------------------------------------------------------- configuration problems (exit 2)


def test_every_configuration_problem_listed_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FHIRWALL_TEST_UNSET_KEY", raising=False)
    argv = [
        "mask",
        "--profile",
        "no-such-profile",
        "--key",
        "s3cr3t-typed-without-a-name",
        "--key",
        "hash=plain:abc",
        "--key",
        "date-shift=env:FHIRWALL_TEST_UNSET_KEY",
        str(tmp_path / "missing.ndjson"),
    ]

    assert main(argv) == 2

    err = capsys.readouterr().err
    assert "5 problem(s)" in err
    assert "unknown built-in masking profile 'no-such-profile'" in err
    assert "safe-harbor" in err  # the known profiles are named
    assert "got hash=..." in err
    assert "environment variable FHIRWALL_TEST_UNSET_KEY is not set" in err
    assert "missing.ndjson" in err
    assert "s3cr3t" not in err  # a mistyped --key may be the secret itself: never echoed
    assert "abc" not in err


def test_missing_keys_exit_2_naming_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.ndjson"
    write_ndjson(source, [patient("p1")])

    assert mask(source, tmp_path / "out.ndjson", keys=False) == 2

    err = capsys.readouterr().err
    assert "no key named 'hash'" in err
    assert "no key named 'date-shift'" in err
    assert leftovers(tmp_path) == ["in.ndjson"]


@pytest.mark.parametrize(
    "spec", ["hash", "hash=", "hash=value:", "=value:abc", "hash=secret:abc", "hash=value:zz:hex"]
)
def test_bad_key_syntax_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: str) -> None:
    source = tmp_path / "in.ndjson"
    write_ndjson(source, [patient("p1")])

    assert main(["mask", "-p", "safe-harbor", "--key", spec, "--key", "date-shift=value:x", str(source)]) == 2

    err = capsys.readouterr().err
    assert "--key" in err or "key hash" in err
    assert "abc" not in err
    assert capsys.readouterr().out == ""


def test_invalid_profile_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile = tmp_path / "typo.yaml"
    profile.write_text("name: typo\nrulez: []\nrules: []\n")
    source = tmp_path / "in.ndjson"
    write_ndjson(source, [patient("p1")])

    assert mask(source, profile=profile) == 2
    assert "rulez" in capsys.readouterr().err

    assert mask(source, profile=tmp_path / "nowhere.yaml") == 2
    assert "no profile file" in capsys.readouterr().err


def test_folder_needs_an_output_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "export").mkdir()
    write_ndjson(tmp_path / "export" / "a.ndjson", [patient("p1")])

    assert mask(tmp_path / "export") == 2
    assert "needs an output folder" in capsys.readouterr().err

    assert mask(tmp_path / "export" / "a.ndjson", tmp_path / "export") == 2  # a file into a folder
    assert "needs an output file" in capsys.readouterr().err


def test_keys_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FHIRWALL_TEST_SHIFT_KEY", SHIFT_KEY)
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        f"hash: {{value: {HASH_KEY.encode().hex()}, encoding: hex}}\n"
        "date-shift: {env: FHIRWALL_TEST_SHIFT_KEY}\n"
    )
    source = tmp_path / "in.ndjson"
    write_ndjson(source, [patient("p1")])
    argv = ["mask", "-p", "safe-harbor", "--keys-file", str(keys), str(source)]

    assert main([*argv, str(tmp_path / "a.ndjson")]) == 0
    assert mask(source, tmp_path / "b.ndjson") == 0  # the same keys given with --key: the same output

    assert (tmp_path / "a.ndjson").read_bytes() == (tmp_path / "b.ndjson").read_bytes()


# --------------------------------------------------------------------------- dates


@pytest.mark.parametrize(("today", "kept"), [("2000-01-01", True), ("2024-01-01", False)])
def test_today_pins_the_age_logic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], today: str, kept: bool
) -> None:
    """Born 1925-03-04: 74 on 2000-01-01 (date shifted), 98 on 2024-01-01 (over 89: removed)."""
    source, target = tmp_path / "p.json", tmp_path / "out.json"
    source.write_text(json.dumps(patient("old", birth="1925-03-04")))

    assert mask("--today", today, source, target) == 0

    masked = read_json(target)
    if kept:
        shifted = date.fromisoformat(masked["birthDate"])
        assert 1 <= abs((shifted - date(1925, 3, 4)).days) <= 50
    else:
        assert "birthDate" not in masked


COMPAT_PROFILE = """\
name: compat-scope
mode: compatibility
parameters:
  date_shift: {{key: date-shift, scope: {scope}}}
rules:
  - {{path: nodesByType('date'), method: dateShift}}
  - {{path: nodesByType('dateTime'), method: dateShift}}
"""


def _offsets(original: list[Json], masked: list[Json]) -> set[int]:
    days: set[int] = set()
    for before, after in zip(original, masked, strict=True):
        for key in ("birthDate", "effectiveDateTime"):
            if key in before:
                days.add((date.fromisoformat(after[key]) - date.fromisoformat(before[key][:10])).days)
    return days


def _resources(tag: str) -> list[Json]:
    people = [patient(f"{tag}-p{n}", birth=f"19{60 + n}-0{n + 1}-1{n}") for n in range(3)]
    return [*people, *(observation(f"{tag}-o{n}", f"{tag}-p0", f"2021-0{n + 1}-2{n}") for n in range(4))]


def test_date_shift_scope_file_one_offset_per_file(tmp_path: Path) -> None:
    profile = tmp_path / "compat.yaml"
    profile.write_text(COMPAT_PROFILE.format(scope="file"))
    names = ("Patient-1.ndjson", "Patient-2.ndjson")
    assert ms_offset(names[0], SHIFT_KEY.encode()) != ms_offset(names[1], SHIFT_KEY.encode())
    for name in names:
        resources = _resources(name)
        write_ndjson(tmp_path / name, resources)

        assert mask("--today", "2024-01-01", tmp_path / name, tmp_path / f"out-{name}", profile=profile) == 0

        masked = read_ndjson(tmp_path / f"out-{name}")
        assert _offsets(resources, masked) == {ms_offset(name, SHIFT_KEY.encode())}


def test_date_shift_scope_file_resource_scope_differs(tmp_path: Path) -> None:
    """Control: with scope ``resource`` the same resources get offsets of their own."""
    profile = tmp_path / "compat.yaml"
    profile.write_text(COMPAT_PROFILE.format(scope="resource"))
    resources = _resources("r")
    write_ndjson(tmp_path / "in.ndjson", resources)

    assert (
        mask("--today", "2024-01-01", tmp_path / "in.ndjson", tmp_path / "out.ndjson", profile=profile) == 0
    )

    assert len(_offsets(resources, read_ndjson(tmp_path / "out.ndjson"))) > 1


def test_date_shift_scope_folder_uses_the_input_folder(tmp_path: Path) -> None:
    """Every file below the input folder, in any subfolder, shifts by the input folder's offset (as MS)."""
    profile = tmp_path / "compat.yaml"
    profile.write_text(COMPAT_PROFILE.format(scope="folder"))
    source = tmp_path / "bulk-export"
    offset = ms_offset(source.name, SHIFT_KEY.encode())
    assert offset not in (ms_offset(sub, SHIFT_KEY.encode()) for sub in ("a", "b"))
    files = {source / "a" / "one.ndjson": _resources("one"), source / "b" / "two.ndjson": _resources("two")}
    for path, resources in files.items():
        path.parent.mkdir(parents=True)
        write_ndjson(path, resources)

    argv = ["mask", "-p", str(profile), *KEYS, "--today", "2024-01-01", str(source), str(tmp_path / "out")]
    assert main(argv) == 0

    for path, resources in files.items():
        masked = read_ndjson(tmp_path / "out" / path.relative_to(source))
        assert _offsets(resources, masked) == {offset}


# --------------------------------------------------------------------------- import-anonymizer-config


def test_imported_anonymizer_config_masks(
    synthea: Json, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip(
        "masking.anonymizer_import",
        reason="masking/anonymizer_import.py (import-anonymizer-config) not there yet",
    )
    if not MS_CONFIG.is_file():
        pytest.skip(f"sample anonymizer configuration missing: {MS_CONFIG}")
    profile = tmp_path / "out.yaml"

    assert main(["import-anonymizer-config", str(MS_CONFIG), str(profile)]) == 0
    assert "mode: compatibility" in profile.read_text()
    capsys.readouterr()

    target = tmp_path / "masked.json"
    assert main(["mask", "--profile", str(profile), "--today", "2024-01-01", str(SYNTHEA), str(target)]) == 0

    masked = read_json(target)
    assert len(masked["entry"]) == len(synthea["entry"])
    ids, names = synthea_identities(synthea)
    # The sample configuration hashes Resource.id and references (fullUrl and Reference.display it keeps,
    # as the anonymizer would) and redacts HumanName.
    assert not {e["resource"]["id"] for e in masked["entry"]} & set(ids)
    assert not {
        e["resource"]["subject"]["reference"] for e in masked["entry"] if "subject" in e["resource"]
    } & {f"urn:uuid:{i}" for i in ids}
    person = next(e["resource"] for e in masked["entry"] if e["resource"]["resourceType"] == "Patient")
    assert [name for name in names if name in json.dumps(person)] == []
    assert "CRYTOHASH" in {label["code"] for label in person["meta"]["security"]}  # the anonymizer's labels


def test_import_anonymizer_config_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip(
        "masking.anonymizer_import",
        reason="masking/anonymizer_import.py (import-anonymizer-config) not there yet",
    )
    if not MS_CONFIG.is_file():
        pytest.skip(f"sample anonymizer configuration missing: {MS_CONFIG}")

    assert main(["import-anonymizer-config", "--name", "from-ms", str(MS_CONFIG)]) == 0

    captured = capsys.readouterr()
    imported = yaml.safe_load(captured.out)
    assert imported["name"] == "from-ms"
    assert imported["mode"] == "compatibility"
    assert "warning:" in captured.err  # the literal keys of the sample must move to a secret store


def _key_bytes() -> dict[str, bytes]:
    return {"hash": HASH_KEY.encode(), "date-shift": SHIFT_KEY.encode()}
