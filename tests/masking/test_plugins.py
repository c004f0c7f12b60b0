"""Plug-in masking methods found through entry points of an installed distribution (a real dist-info)."""

from __future__ import annotations

from pathlib import Path

import pytest

from masking import ProfileError, compile_profile, parse_profile
from masking.methods.plugins import ENTRY_POINT_GROUP, load_plugin_methods

PLUGIN = """
from typing import Any

class Shout:
    name = "shout"
    label = "MASKED"

    def apply(self, leaf: Any, context: Any) -> Any:
        return str(leaf.value).upper()

def build(settings: Any, params: Any) -> Shout:
    return Shout()

broken = 42
"""


def install(folder: Path, name: str, entry_points: str) -> None:
    (folder / f"{name}.py").write_text(PLUGIN)
    info = folder / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry_points}\n")


def test_a_plugin_method_is_usable_in_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(tmp_path, "fhirwall_shout_plugin", "shout = fhirwall_shout_plugin:build")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_plugin_methods(rescan=True) == []
    profile = parse_profile({"name": "p", "rules": [{"path": "Patient.gender", "method": "shout"}]})
    masked = compile_profile(profile).mask({"resourceType": "Patient", "gender": "female"})
    assert masked is not None
    assert masked["gender"] == "FEMALE"


def test_a_broken_plugin_is_a_start_up_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(tmp_path, "fhirwall_broken_plugin", "broken = fhirwall_broken_plugin:broken\nmissing = nowhere:x")
    monkeypatch.syspath_prepend(str(tmp_path))
    problems = dict(load_plugin_methods(rescan=True))
    assert set(problems) == {"plugins.broken", "plugins.missing"}
    assert "not a method factory" in problems["plugins.broken"]
    profile = parse_profile({"name": "p", "rules": [{"path": "Patient.gender", "method": "redact"}]})
    with pytest.raises(ProfileError) as caught:
        compile_profile(profile)  # every later compile reports the broken plug-in too
    assert {path for path, _ in caught.value.problems} == {"plugins.broken", "plugins.missing"}
    monkeypatch.undo()
    assert load_plugin_methods(rescan=True) == []
