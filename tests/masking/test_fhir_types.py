"""The FHIR element type table: element types, choices, backbones, primitive extensions, and its freshness."""

from __future__ import annotations

from importlib.resources import files

import pytest

from masking import fhir_types
from masking.data.build_types import build_table, serialise
from masking.fhir_types import (
    DATE_TYPES,
    NUMBER_TYPES,
    PRIMITIVE_TYPES,
    QUANTITY_TYPES,
    ElementInfo,
    complex_type_graph,
    element,
    elements,
    fhir_type_of,
    fhirpath_children,
    is_known_type,
    is_resource_type,
)

# (type, JSON key) -> (type_name, fhir_type, is_list, choice_of, required, is_primitive)
ELEMENT_CASES = [
    ("Patient", "birthDate", ("date", "date", False, None, False, True)),
    ("Patient", "name", ("HumanName", "HumanName", True, None, False, False)),
    ("Patient", "_birthDate", ("Element", "Element", False, None, False, False)),
    ("Patient", "id", ("id", "id", False, None, False, True)),
    ("Patient", "meta", ("Meta", "Meta", False, None, False, False)),
    ("Patient", "contained", ("Resource", "Resource", True, None, False, False)),
    ("Patient", "extension", ("Extension", "Extension", True, None, False, False)),
    ("Patient", "deceasedDateTime", ("dateTime", "dateTime", False, "deceased", False, True)),
    ("Patient", "contact", ("PatientContact", "BackboneElement", True, None, False, False)),
    ("PatientContact", "name", ("HumanName", "HumanName", False, None, False, False)),
    ("PatientContact", "modifierExtension", ("Extension", "Extension", True, None, False, False)),
    ("HumanName", "given", ("string", "string", True, None, False, True)),
    ("HumanName", "_given", ("Element", "Element", True, None, False, False)),
    ("HumanName", "id", ("string", "string", False, None, False, True)),
    ("Observation", "valueQuantity", ("Quantity", "Quantity", False, "value", False, False)),
    ("Observation", "valueString", ("string", "string", False, "value", False, True)),
    ("Observation", "_valueString", ("Element", "Element", False, None, False, False)),
    ("Observation", "status", ("code", "code", False, None, True, True)),
    ("Observation", "code", ("CodeableConcept", "CodeableConcept", False, None, True, False)),
    ("Observation", "component", ("ObservationComponent", "BackboneElement", True, None, False, False)),
    (
        "MedicationRequest",
        "medicationReference",
        ("Reference", "Reference", False, "medication", True, False),
    ),
    ("Bundle", "entry", ("BundleEntry", "BackboneElement", True, None, False, False)),
    ("BundleEntry", "resource", ("Resource", "Resource", False, None, False, False)),
    ("BundleEntry", "request", ("BundleEntryRequest", "BackboneElement", False, None, False, False)),
    ("Parameters", "parameter", ("ParametersParameter", "BackboneElement", True, None, False, False)),
    ("ParametersParameter", "resource", ("Resource", "Resource", False, None, False, False)),
    ("ParametersParameter", "part", ("ParametersParameter", "BackboneElement", True, None, False, False)),
    ("Address", "postalCode", ("string", "string", False, None, False, True)),
    ("Address", "line", ("string", "string", True, None, False, True)),
    ("Reference", "reference", ("string", "string", False, None, False, True)),
    ("Reference", "identifier", ("Identifier", "Identifier", False, None, False, False)),
    ("Identifier", "value", ("string", "string", False, None, False, True)),
    ("Extension", "url", ("uri", "uri", False, None, True, True)),
    ("Extension", "_url", ("Element", "Element", False, None, False, False)),
    ("Extension", "valueAge", ("Age", "Age", False, "value", False, False)),
    ("Extension", "valueMeta", ("Meta", "Meta", False, "value", False, False)),
    (
        "Extension",
        "valueCodeableReference",
        ("CodeableReference", "CodeableReference", False, "value", False, False),
    ),
    ("Extension", "_valueDate", ("Element", "Element", False, None, False, False)),
    ("Narrative", "div", ("xhtml", "xhtml", False, None, True, True)),
    ("Meta", "lastUpdated", ("instant", "instant", False, None, False, True)),
    ("Age", "value", ("decimal", "decimal", False, None, False, True)),
    ("Attachment", "data", ("base64Binary", "base64Binary", False, None, False, True)),
    ("Timing", "repeat", ("TimingRepeat", "Element", False, None, False, False)),
    ("TimingRepeat", "boundsDuration", ("Duration", "Duration", False, "bounds", False, False)),
    ("Coding", "system", ("uri", "uri", False, None, False, True)),
    ("Element", "extension", ("Extension", "Extension", True, None, False, False)),
    ("ExampleScenarioInstance", "resourceType", ("code", "code", False, None, True, True)),
    ("Practitioner", "birthDate", ("date", "date", False, None, False, True)),
    ("Patient", "multipleBirthInteger", ("integer", "integer", False, "multipleBirth", False, True)),
    (
        "ImmunizationRecommendationRecommendation",
        "doseNumberPositiveInt",
        ("positiveInt", "positiveInt", False, "doseNumber", False, True),
    ),
]


@pytest.mark.parametrize(
    ("type_name", "key", "expected"), ELEMENT_CASES, ids=[f"{name}.{key}" for name, key, _ in ELEMENT_CASES]
)
def test_element(type_name: str, key: str, expected: tuple[str, str, bool, str | None, bool, bool]) -> None:
    info = element(type_name, key)
    assert info is not None
    assert info.name == key
    assert (
        info.type_name,
        info.fhir_type,
        info.is_list,
        info.choice_of,
        info.required,
        info.is_primitive,
    ) == (expected)
    assert elements(type_name)[key] is info


@pytest.mark.parametrize(
    ("type_name", "key"),
    [
        ("Patient", "resourceType"),
        ("Patient", "fhir_comments"),
        ("Patient", "birthDate__ext"),
        ("Patient", "deceased"),
        ("Patient", "_id"),
        ("Patient", "_name"),
        ("HumanName", "_id"),
        ("Narrative", "_div"),
        ("Patient", "nope"),
        ("NoSuchType", "id"),
        ("date", "value"),
        ("Resource", "resourceType"),
    ],
)
def test_not_an_element(type_name: str, key: str) -> None:
    assert element(type_name, key) is None
    assert key not in elements(type_name)


@pytest.mark.parametrize("type_name", ["NoSuchType", "date", "string", "xhtml", "", "patient"])
def test_no_elements(type_name: str) -> None:
    assert elements(type_name) == {}
    assert fhirpath_children(type_name, "id") == ()


def test_backbone_walk() -> None:
    contact = element("Patient", "contact")
    assert contact is not None
    assert contact.fhir_type == "BackboneElement"
    name = element(contact.type_name, "name")
    assert name is not None
    assert (name.type_name, name.is_list) == ("HumanName", False)
    family = element(name.type_name, "family")
    assert family is not None
    assert (family.type_name, family.is_primitive) == ("string", True)


OBSERVATION_VALUES = {
    "valueBoolean",
    "valueCodeableConcept",
    "valueDateTime",
    "valueInteger",
    "valuePeriod",
    "valueQuantity",
    "valueRange",
    "valueRatio",
    "valueSampledData",
    "valueString",
    "valueTime",
}


@pytest.mark.parametrize(
    ("type_name", "step", "keys"),
    [
        ("Observation", "value", OBSERVATION_VALUES),
        ("Observation", "valueQuantity", {"valueQuantity"}),
        ("ObservationComponent", "value", OBSERVATION_VALUES),
        ("Patient", "name", {"name"}),
        ("Patient", "deceased", {"deceasedBoolean", "deceasedDateTime"}),
        ("Patient", "multipleBirth", {"multipleBirthBoolean", "multipleBirthInteger"}),
        ("Patient", "contact", {"contact"}),
        ("Patient", "id", {"id"}),
        ("Patient", "text", {"text"}),
        ("MedicationRequest", "medication", {"medicationCodeableConcept", "medicationReference"}),
        ("Patient", "_birthDate", set()),
        ("Patient", "birth", set()),
        ("Patient", "deceased[x]", set()),
        ("NoSuchType", "name", set()),
    ],
)
def test_fhirpath_children(type_name: str, step: str, keys: set[str]) -> None:
    found = fhirpath_children(type_name, step)
    assert {info.name for info in found} == keys
    assert len(found) == len(keys)
    for info in found:
        assert info is element(type_name, info.name)


def test_value_choice_types() -> None:
    found = {info.name: info for info in fhirpath_children("Observation", "value")}
    assert found["valueQuantity"].type_name == "Quantity"
    assert found["valueDateTime"].type_name == "dateTime"
    assert all(info.choice_of == "value" for info in found.values())


def test_extension_value_lists_every_open_type() -> None:
    types = {info.type_name for info in fhirpath_children("Extension", "value")}
    # Every primitive but xhtml, R4's Meta, R4B's CodeableReference and RatioRange, and the usual datatypes.
    assert PRIMITIVE_TYPES - {"xhtml"} <= types
    assert {"Meta", "CodeableReference", "RatioRange"} <= types
    assert {
        "Address",
        "Age",
        "Annotation",
        "Attachment",
        "CodeableConcept",
        "Coding",
        "ContactPoint",
    } <= types
    assert {
        "Count",
        "Distance",
        "Duration",
        "HumanName",
        "Identifier",
        "Money",
        "Period",
        "Quantity",
    } <= types
    assert {"Range", "Ratio", "Reference", "SampledData", "Signature", "Timing", "Dosage"} <= types
    assert {"ContactDetail", "Contributor", "DataRequirement", "Expression", "ParameterDefinition"} <= types
    assert {"RelatedArtifact", "TriggerDefinition", "UsageContext"} <= types
    assert len(types) == 52
    for other, step in [
        ("ParametersParameter", "value"),
        ("TaskInput", "value"),
        ("TaskOutput", "value"),
        ("ElementDefinition", "fixed"),
        ("ElementDefinition", "pattern"),
        ("ElementDefinition", "defaultValue"),
        ("ElementDefinitionExample", "value"),
        ("StructureMapGroupRuleSource", "defaultValue"),
    ]:
        assert {info.type_name for info in fhirpath_children(other, step)} == types, other


@pytest.mark.parametrize(
    ("name", "resource", "known"),
    [
        ("Patient", True, True),
        ("Observation", True, True),
        ("Bundle", True, True),
        ("SubscriptionTopic", True, True),
        ("Resource", False, True),
        ("DomainResource", False, True),
        ("PatientContact", False, True),
        ("HumanName", False, True),
        ("Element", False, True),
        ("BackboneElement", False, True),
        ("date", False, True),
        ("xhtml", False, True),
        ("MedicinalProduct", False, False),
        ("FHIRPrimitiveExtension", False, False),
        ("patient", False, False),
        ("", False, False),
    ],
)
def test_type_kinds(name: str, resource: bool, known: bool) -> None:
    assert is_resource_type(name) is resource
    assert is_known_type(name) is known


def test_fhir_types() -> None:
    names = fhir_types.fhir_types()
    assert {"Patient", "Resource", "DomainResource", "HumanName", "Quantity", "Age"} <= names
    assert {"Element", "BackboneElement", "Extension", "Narrative", "date", "dateTime", "xhtml"} <= names
    assert names >= PRIMITIVE_TYPES
    assert not {"PatientContact", "BundleEntry", "TimingRepeat", "FHIRPrimitiveExtension"} & names
    assert {fhir_type_of(name) for name in complex_type_graph()} | PRIMITIVE_TYPES == names


@pytest.mark.parametrize(
    ("name", "fhir_type"),
    [
        ("PatientContact", "BackboneElement"),
        ("BundleEntry", "BackboneElement"),
        ("TimingRepeat", "Element"),
        ("DosageDoseAndRate", "Element"),
        ("Patient", "Patient"),
        ("Age", "Age"),
        ("date", "date"),
        ("NoSuchType", "NoSuchType"),
    ],
)
def test_fhir_type_of(name: str, fhir_type: str) -> None:
    assert fhir_type_of(name) == fhir_type


def test_complex_type_graph() -> None:
    graph = complex_type_graph()
    assert {"Patient", "PatientContact", "HumanName", "Element", "Resource"} <= set(graph)
    assert {"PatientContact", "HumanName", "Extension", "Narrative", "Element"} <= graph["Patient"]
    assert "Resource" not in graph["Patient"]
    assert "Resource" not in graph["BundleEntry"]
    assert graph["Element"] == {"Extension"}


def test_constants() -> None:
    assert {
        "boolean",
        "integer",
        "positiveInt",
        "unsignedInt",
        "decimal",
        "string",
        "code",
        "id",
        "markdown",
        "uri",
        "url",
        "canonical",
        "oid",
        "uuid",
        "base64Binary",
        "instant",
        "date",
        "dateTime",
        "time",
        "xhtml",
    } == PRIMITIVE_TYPES
    assert {"date", "dateTime", "instant"} == DATE_TYPES
    assert {"decimal", "integer", "positiveInt", "unsignedInt"} == NUMBER_TYPES
    assert {"Quantity", "Age", "Count", "Duration", "Distance", "Money"} == QUANTITY_TYPES
    assert fhir_types.FHIR_VERSION == "4.3.0"


def test_infos_are_shared() -> None:
    assert elements("Patient") is elements("Patient")
    # Inherited elements are the base type's objects.
    assert element("Patient", "id") is element("Resource", "id")
    assert element("Patient", "text") is element("Observation", "text")
    assert element("PatientContact", "modifierExtension") is element("BackboneElement", "modifierExtension")
    assert element("Age", "value") is element("Quantity", "value")


def _every_element() -> list[tuple[str, ElementInfo]]:
    return [(name, info) for name in complex_type_graph() for info in elements(name).values()]


def test_every_element_type_is_known() -> None:
    for type_name, info in _every_element():
        assert is_known_type(info.type_name), (type_name, info)
        assert info.fhir_type == fhir_type_of(info.type_name), (type_name, info)
        assert info.is_primitive is (info.type_name in PRIMITIVE_TYPES), (type_name, info)


def test_primitives_have_extension_siblings() -> None:
    """Every primitive but ``id`` (Element, Resource) and ``xhtml`` may carry ``_key`` (list for list)."""
    for type_name, info in _every_element():
        sibling = elements(type_name).get("_" + info.name)
        if info.is_primitive and info.name != "id" and info.type_name != "xhtml":
            assert sibling is not None, (type_name, info.name)
            assert (sibling.type_name, sibling.is_list) == ("Element", info.is_list), (type_name, info.name)
        elif not info.name.startswith("_"):
            assert sibling is None, (type_name, info.name)


def test_table_is_current() -> None:
    """``r4b-types.json`` is what ``build_types.py`` makes from the installed fhir.resources."""
    shipped = (files("masking.data") / "r4b-types.json").read_bytes()
    assert serialise(build_table()) == shipped
