"""SMART scopes: v2 and v1 grammar, granular criteria, malformed and out-of-order letters, union semantics."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.auth.scopes import (
    CONTEXTS,
    Permission,
    ResourceScope,
    ScopeSet,
    parse_scope,
    parse_scopes,
    permission_for,
)
from proxy.fhir.request import Interaction
from proxy.fhir.resource_types import R4_RESOURCE_TYPES

LETTERS = "cruds"
IN_ORDER = sorted("".join(combo) for size in range(1, 6) for combo in itertools.combinations(LETTERS, size))
OUT_OF_ORDER = sorted(
    {
        "".join(perm)
        for size in range(2, 6)
        for combo in itertools.combinations(LETTERS, size)
        for perm in itertools.permutations(combo)
    }
    - set(IN_ORDER)
)
LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
LAB_ENCODED = "http%3A%2F%2Fterminology.hl7.org%2FCodeSystem%2Fobservation-category%7Claboratory"


def _scope(text: str) -> ResourceScope:
    scope = parse_scope(text)
    assert scope is not None, text
    return scope


# --- valid v2 -----------------------------------------------------------------------------------------


def test_there_are_31_in_order_subsets() -> None:
    assert len(IN_ORDER) == 31
    assert len(OUT_OF_ORDER) == 2 * 10 + 6 * 10 + 24 * 5 + 120 - 26
    assert not set(IN_ORDER) & set(OUT_OF_ORDER)


@pytest.mark.parametrize("letters", IN_ORDER)
@pytest.mark.parametrize("context", CONTEXTS)
def test_every_in_order_subset_parses(context: str, letters: str) -> None:
    raw = f"{context}/Observation.{letters}"
    scope = _scope(raw)
    assert scope == ResourceScope(context, "Observation", frozenset(map(Permission, letters)), (), raw, 2)
    assert set(scope.permissions) == set(letters)


@pytest.mark.parametrize(
    ("text", "context", "resource_type", "letters", "criteria"),
    [
        ("patient/Observation.rs", "patient", "Observation", "rs", ()),
        ("user/Patient.cruds", "user", "Patient", "cruds", ()),
        ("system/*.rs", "system", "*", "rs", ()),
        ("patient/*.cud", "patient", "*", "cud", ()),
        ("user/Encounter.s", "user", "Encounter", "s", ()),
        ("user/Binary.r", "user", "Binary", "r", ()),
        (
            "patient/Observation.rs?category=laboratory",
            "patient",
            "Observation",
            "rs",
            (("category", "laboratory"),),
        ),
        ("patient/Observation.rs?category=" + LAB, "patient", "Observation", "rs", (("category", LAB),)),
        (
            "patient/Observation.rs?category=" + LAB_ENCODED,
            "patient",
            "Observation",
            "rs",
            (("category", LAB),),
        ),
        (
            "user/Observation.rs?category=vital-signs&status=final",
            "user",
            "Observation",
            "rs",
            (("category", "vital-signs"), ("status", "final")),
        ),
        (
            "patient/Condition.rs?category=http://hl7.org/fhir/us/core/CodeSystem/condition-category|health-concern",
            "patient",
            "Condition",
            "rs",
            (("category", "http://hl7.org/fhir/us/core/CodeSystem/condition-category|health-concern"),),
        ),
        ("patient/*.rs?_security=R", "patient", "*", "rs", (("_security", "R"),)),
        ("patient/Observation.r?code=a%26b%3Dc", "patient", "Observation", "r", (("code", "a&b=c"),)),
        ("patient/Observation.r?code=a+b", "patient", "Observation", "r", (("code", "a+b"),)),
        (
            "patient/Observation.r?code%3Atext=%C3%A9",
            "patient",
            "Observation",
            "r",
            (("code:text", "\u00e9"),),
        ),
        ("patient/Observation.r?a=1&a=2", "patient", "Observation", "r", (("a", "1"), ("a", "2"))),
        ("patient/Observation.r?code=x?y", "patient", "Observation", "r", (("code", "x?y"),)),
        ("patient/Observation.r?code==x", "patient", "Observation", "r", (("code", "=x"),)),
    ],
)
def test_valid_v2(
    text: str, context: str, resource_type: str, letters: str, criteria: tuple[tuple[str, str], ...]
) -> None:
    scope = _scope(text)
    assert (scope.context, scope.resource_type, scope.criteria, scope.raw, scope.version) == (
        context,
        resource_type,
        criteria,
        text,
        2,
    )
    assert scope.permissions == frozenset(letters)


@pytest.mark.parametrize("resource_type", sorted(R4_RESOURCE_TYPES))
def test_every_r4_type_is_accepted(resource_type: str) -> None:
    assert _scope(f"user/{resource_type}.rs").resource_type == resource_type


# --- v1 ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "letters"),
    [
        ("patient/Observation.read", "rs"),
        ("patient/Observation.write", "cud"),
        ("patient/Observation.*", "cruds"),
        ("user/*.read", "rs"),
        ("user/*.write", "cud"),
        ("user/*.*", "cruds"),
        ("system/*.read", "rs"),
        ("system/Patient.*", "cruds"),
    ],
)
def test_v1_mapping(text: str, letters: str) -> None:
    scope = _scope(text)
    assert scope.permissions == frozenset(letters)
    assert scope.version == 1
    assert scope.criteria == ()
    assert scope.raw == text


def test_v1_write_does_not_imply_read() -> None:
    scopes = parse_scopes("patient/Observation.write")
    for letter in "cud":
        assert scopes.allows("Observation", letter)
    for letter in "rs":
        assert not scopes.allows("Observation", letter)


# --- malformed, out of order, unknown ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "patient/Observation.dr",
        "patient/Observation.dus",
        "patient/Observation.sr",
        "patient/Observation.rr",
        "patient/Observation.crudss",
        "patient/Observation.ccruds",
        "patient/Observation.CRUDS",
        "patient/Observation.RS",
        "patient/Observation.Read",
        "patient/Observation.READ",
        "patient/Observation.x",
        "patient/Observation.rx",
        "patient/Observation.r*",
        "patient/Observation.**",
        "patient/Observation.readwrite",
        "patient/Observation.read?category=x",
        "patient/Observation.*?category=x",
        "patient/observation.rs",
        "patient/OBSERVATION.rs",
        "patient/Foo.rs",
        "patient/Observation.",
        "patient/Observation",
        "patient/.rs",
        "patient/*",
        "Observation.rs",
        "/Observation.rs",
        "admin/Observation.rs",
        "Patient/Observation.rs",
        "PATIENT/Observation.rs",
        "patient//Observation.rs",
        "patient/Observation/x.rs",
        "patient/Observation.rs.rs",
        "patient/**.rs",
        "patient/*x.rs",
        "patient/*.*x",
        "patient/Observation.rs?",
        "patient/Observation.rs?=x",
        "patient/Observation.rs?category",
        "patient/Observation.rs?category=",
        "patient/Observation.rs?category=x&",
        "patient/Observation.rs?&category=x",
        "patient/Observation.rs?category=x&&status=final",
        "patient/Observation.rs?category=x&status",
        "patient/Observation.rs?category=%zz",
        "patient/Observation.rs?category=%4",
        "patient/Observation.rs?category=%FF",
        "patient/Observation.rs?%3D=x",
        "patient/Observation.rs?a%26b=x",
        "patient/Observation.rs?a%20b=x",
        "patient/Observation.rs?%C3%A9=x",
        "patient/Observation.rs?category=a b",
        "patient/Observation.rs?category=\u00e9",
        'patient/Observation.rs?category="x"',
        "patient/Observation.rs?category=a\\b",
        " patient/Observation.rs",
        "patient/Observation.rs ",
        "patient/Observation.rs\n",
        "patient/Observation.r\ts",
        "patient/Observation\u3002rs",
        "patient/\uff2fbservation.rs",
        "patient/Observation.r\u0455",
    ],
)
def test_malformed_scopes_are_none(text: str) -> None:
    assert parse_scope(text) is None


@pytest.mark.parametrize("letters", OUT_OF_ORDER)
def test_every_out_of_order_permutation_is_none(letters: str) -> None:
    assert parse_scope(f"patient/Observation.{letters}") is None
    assert parse_scope(f"user/*.{letters}") is None


@pytest.mark.parametrize(
    "text",
    [
        "launch",
        "launch/patient",
        "launch/encounter",
        "openid",
        "fhirUser",
        "profile",
        "offline_access",
        "online_access",
        "smart/orchestrate_launch",
        "patient/$everything",
        "something-unknown",
        "https://example.org/scope",
    ],
)
def test_non_resource_scopes_are_ignored(text: str) -> None:
    assert parse_scope(text) is None
    scopes = parse_scopes(f"{text} patient/Patient.rs")
    assert scopes.ignored == (text,)
    assert [scope.raw for scope in scopes.resource_scopes] == ["patient/Patient.rs"]


def test_only_non_resource_scopes_grant_nothing() -> None:
    scopes = parse_scopes("launch launch/patient openid fhirUser profile offline_access online_access")
    assert scopes.resource_scopes == ()
    assert len(scopes.ignored) == 7
    assert scopes.contexts == frozenset()
    for letter in LETTERS:
        assert not scopes.allows("Patient", letter)
        assert scopes.grants("Patient", letter) == ()
        assert scopes.criteria_alternatives("Patient", letter) == ()


# --- parse_scopes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given_scopes",
    [
        "openid patient/Observation.rs user/Patient.r",
        "  openid\tpatient/Observation.rs   user/Patient.r  ",
        ["openid", "patient/Observation.rs", "user/Patient.r"],
        ("openid", "patient/Observation.rs user/Patient.r"),
        "openid patient/Observation.rs openid user/Patient.r patient/Observation.rs",
    ],
)
def test_parse_scopes_inputs(given_scopes: str | list[str] | tuple[str, ...]) -> None:
    scopes = parse_scopes(given_scopes)
    assert [scope.raw for scope in scopes.resource_scopes] == ["patient/Observation.rs", "user/Patient.r"]
    assert scopes.ignored == ("openid",)
    assert scopes.contexts == frozenset({"patient", "user"})


def test_parse_scopes_empty() -> None:
    assert parse_scopes("") == ScopeSet()
    assert parse_scopes([]) == ScopeSet()


def test_out_of_order_scopes_are_kept_as_ignored_and_grant_nothing() -> None:
    scopes = parse_scopes("patient/Observation.dr patient/Observation.dus patient/*.sr")
    assert scopes.resource_scopes == ()
    assert scopes.ignored == ("patient/Observation.dr", "patient/Observation.dus", "patient/*.sr")
    for letter in LETTERS:
        assert not scopes.allows("Observation", letter)


# --- grants and union semantics ---------------------------------------------------------------------

GRANT_TABLE = "patient/Observation.rs user/Patient.cru system/*.s patient/Condition.d"


@pytest.mark.parametrize(
    ("resource_type", "permission", "contexts", "expected"),
    [
        ("Observation", "r", None, ["patient/Observation.rs"]),
        ("Observation", "s", None, ["patient/Observation.rs", "system/*.s"]),
        ("Observation", "c", None, []),
        ("Observation", "u", None, []),
        ("Observation", "d", None, []),
        ("Observation", "s", ["patient"], ["patient/Observation.rs"]),
        ("Observation", "s", ["system"], ["system/*.s"]),
        ("Observation", "s", ["user"], []),
        ("Observation", "s", [], []),
        ("Observation", "s", ("patient", "system"), ["patient/Observation.rs", "system/*.s"]),
        ("Patient", "c", None, ["user/Patient.cru"]),
        ("Patient", "r", None, ["user/Patient.cru"]),
        ("Patient", "u", None, ["user/Patient.cru"]),
        ("Patient", "d", None, []),
        ("Patient", "s", None, ["system/*.s"]),
        ("Patient", "r", {"patient"}, []),
        ("Condition", "d", None, ["patient/Condition.d"]),
        ("Condition", "r", None, []),
        ("Medication", "s", None, ["system/*.s"]),
        ("Medication", "r", None, []),
        ("*", "s", None, ["system/*.s"]),
        ("*", "r", None, []),
    ],
)
def test_grants_table(
    resource_type: str, permission: str, contexts: list[str] | None, expected: list[str]
) -> None:
    scopes = parse_scopes(GRANT_TABLE)
    assert [scope.raw for scope in scopes.grants(resource_type, permission, contexts)] == expected
    assert scopes.allows(resource_type, permission, contexts) is bool(expected)


def test_permission_enum_is_accepted_as_permission() -> None:
    scopes = parse_scopes("patient/Observation.rs")
    assert scopes.allows("Observation", Permission.READ)
    assert not scopes.allows("Observation", Permission.DELETE)


def test_granular_plus_full_scope_is_unrestricted() -> None:
    scopes = parse_scopes(f"patient/Observation.rs?category={LAB} patient/Observation.rs")
    assert scopes.allows("Observation", "r")
    assert scopes.unrestricted("Observation", "r")
    assert scopes.criteria_alternatives("Observation", "r") is None
    assert len(scopes.grants("Observation", "r")) == 2


def test_full_scope_through_wildcard_makes_granular_unrestricted() -> None:
    scopes = parse_scopes("patient/Observation.rs?category=laboratory user/*.r")
    assert scopes.criteria_alternatives("Observation", "r") is None
    assert scopes.criteria_alternatives("Observation", "r", ["patient"]) == ((("category", "laboratory"),),)
    assert scopes.criteria_alternatives("Observation", "s") == ((("category", "laboratory"),),)


def test_two_granular_scopes_are_two_alternatives() -> None:
    scopes = parse_scopes(
        "patient/Observation.rs?category=laboratory patient/Observation.rs?category=vital-signs&status=final"
    )
    assert scopes.allows("Observation", "s")
    assert not scopes.unrestricted("Observation", "s")
    assert scopes.criteria_alternatives("Observation", "s") == (
        (("category", "laboratory"),),
        (("category", "vital-signs"), ("status", "final")),
    )


def test_duplicate_alternatives_collapse() -> None:
    scopes = parse_scopes(
        ["patient/Observation.rs?category=laboratory", "patient/Observation.r?category=laboratory"]
    )
    assert scopes.criteria_alternatives("Observation", "r") == ((("category", "laboratory"),),)
    assert scopes.criteria_alternatives("Observation", "s") == ((("category", "laboratory"),),)


def test_granular_scope_does_not_leak_other_letters_or_types() -> None:
    scopes = parse_scopes("patient/Observation.s?category=laboratory")
    assert not scopes.allows("Observation", "r")
    assert not scopes.allows("Condition", "s")
    assert scopes.criteria_alternatives("Observation", "r") == ()
    assert not scopes.unrestricted("Observation", "r")


def test_denied_differs_from_unrestricted() -> None:
    scopes = parse_scopes("patient/Patient.r")
    assert scopes.criteria_alternatives("Observation", "r") == ()
    assert scopes.criteria_alternatives("Patient", "r") is None


def test_wildcard_type_matches_every_type() -> None:
    scopes = parse_scopes("user/*.rs")
    for resource_type in R4_RESOURCE_TYPES:
        assert scopes.unrestricted(resource_type, "r")
        assert not scopes.allows(resource_type, "c")


def test_contexts_property() -> None:
    assert parse_scopes("patient/*.rs launch openid").contexts == frozenset({"patient"})
    assert parse_scopes("system/*.rs user/Patient.r").contexts == frozenset({"system", "user"})
    assert parse_scopes("patient/Observation.dr").contexts == frozenset()


@pytest.mark.parametrize(
    ("resource_type", "permission", "contexts", "error"),
    [
        ("Foo", "r", None, ValueError),
        ("observation", "r", None, ValueError),
        ("", "r", None, ValueError),
        ("Observation", "", None, ValueError),
        ("Observation", "rs", None, ValueError),
        ("Observation", "ds", None, ValueError),
        ("Observation", "R", None, ValueError),
        ("Observation", "x", None, ValueError),
        ("Observation", "read", None, ValueError),
        ("Observation", "r", ["admin"], ValueError),
        ("Observation", "r", "patient", TypeError),
    ],
)
def test_grants_rejects_bad_arguments(
    resource_type: str, permission: str, contexts: list[str] | str | None, error: type[Exception]
) -> None:
    scopes = parse_scopes("user/*.cruds")
    with pytest.raises(error):
        scopes.grants(resource_type, permission, contexts)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"context": "admin", "resource_type": "Patient", "permissions": frozenset("r")},
        {"context": "patient", "resource_type": "Foo", "permissions": frozenset("r")},
        {"context": "patient", "resource_type": "Patient", "permissions": frozenset()},
        {"context": "patient", "resource_type": "Patient", "permissions": frozenset({"rs"})},
        {"context": "patient", "resource_type": "Patient", "permissions": frozenset("x")},
        {"context": "patient", "resource_type": "Patient", "permissions": frozenset("r"), "version": 3},
    ],
)
def test_resource_scope_validates_fields(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"unknown|must"):
        ResourceScope(**kwargs)  # type: ignore[arg-type]


# --- interactions -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interaction", "letter"),
    [
        (Interaction.READ, "r"),
        (Interaction.VREAD, "r"),
        (Interaction.HISTORY_INSTANCE, "r"),
        (Interaction.SEARCH_TYPE, "s"),
        (Interaction.SEARCH_SYSTEM, "s"),
        (Interaction.SEARCH_COMPARTMENT, "s"),
        (Interaction.HISTORY_TYPE, "s"),
        (Interaction.HISTORY_SYSTEM, "s"),
        (Interaction.CREATE, "c"),
        (Interaction.UPDATE, "u"),
        (Interaction.PATCH, "u"),
        (Interaction.DELETE, "d"),
        ("read", "r"),
        ("patch", "u"),
    ],
)
def test_permission_for(interaction: str, letter: str) -> None:
    assert permission_for(interaction) == letter


@pytest.mark.parametrize(
    "interaction",
    [
        Interaction.OPERATION,
        Interaction.BATCH,
        Interaction.TRANSACTION,
        Interaction.CAPABILITIES,
        "",
        "READ",
        "x",
    ],
)
def test_permission_for_unmapped_raises(interaction: str) -> None:
    with pytest.raises(ValueError, match="no scope permission"):
        permission_for(interaction)


def test_every_interaction_is_either_mapped_or_refused() -> None:
    unmapped = {
        Interaction.OPERATION,
        Interaction.BATCH,
        Interaction.TRANSACTION,
        Interaction.CAPABILITIES,
        Interaction.PAGE,
    }
    for interaction in Interaction:
        if interaction in unmapped:
            continue
        assert permission_for(interaction) in LETTERS


# --- properties -------------------------------------------------------------------------------------

letter_sequences = st.lists(st.sampled_from(LETTERS), min_size=1, max_size=8).map("".join)
token_text = st.text(alphabet=st.sampled_from("cruds*CRUDS.?=&/%|xyz:aeiotwPObservation"), max_size=40)


@given(letters=letter_sequences, context=st.sampled_from(CONTEXTS))
def test_letters_parse_only_in_cruds_order(letters: str, context: str) -> None:
    scope = parse_scope(f"{context}/Observation.{letters}")
    in_order = letters in IN_ORDER
    assert (scope is not None) == in_order
    if scope is not None:
        assert scope.permissions == frozenset(letters)


@given(letters=letter_sequences.filter(lambda letters: letters not in IN_ORDER))
def test_out_of_order_never_grants_anything(letters: str) -> None:
    scopes = parse_scopes(f"patient/Observation.{letters} patient/*.{letters}?category=x")
    assert scopes.resource_scopes == ()
    for letter in LETTERS:
        assert not scopes.allows("Observation", letter)


@given(text=token_text)
def test_parse_never_grants_a_letter_not_written(text: str) -> None:
    scope = parse_scope(text)
    if scope is None:
        return
    permission_part = text.split("?", 1)[0].rsplit(".", 1)[1]
    if scope.version == 2:
        assert set(scope.permissions) == set(permission_part)
    else:
        assert permission_part in ("read", "write", "*")
    assert scope.raw == text


@given(
    tokens=st.lists(st.one_of(token_text, st.sampled_from(["patient/*.rs", "user/Patient.cud"])), max_size=6)
)
def test_parse_scopes_partitions_tokens(tokens: list[str]) -> None:
    scopes = parse_scopes(tokens)
    words = {word for token in tokens for word in token.split()}
    assert {scope.raw for scope in scopes.resource_scopes} | set(scopes.ignored) == words
    assert not {scope.raw for scope in scopes.resource_scopes} & set(scopes.ignored)
    for scope in scopes.resource_scopes:
        for letter in scope.permissions:
            assert scopes.allows("Observation" if scope.resource_type == "*" else scope.resource_type, letter)


@given(
    first=st.sampled_from(IN_ORDER),
    second=st.sampled_from(IN_ORDER),
    letter=st.sampled_from(LETTERS),
)
def test_union_is_the_or_of_each_scope(first: str, second: str, letter: str) -> None:
    both = parse_scopes(f"user/Observation.{first} user/Observation.{second}?code=x")
    assert both.allows("Observation", letter) is (letter in first or letter in second)
    assert both.unrestricted("Observation", letter) is (letter in first)
    alternatives = both.criteria_alternatives("Observation", letter)
    if letter in first:
        assert alternatives is None
    elif letter in second:
        assert alternatives == ((("code", "x"),),)
    else:
        assert alternatives == ()
