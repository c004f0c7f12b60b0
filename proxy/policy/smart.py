"""SMART-on-FHIR request decisions: scopes, patient compartments, and the query shapes that could leak.

Per interaction, before anything is forwarded: the type-level permission (c/r/u/d/s), the shapes that can
infer other patients' data (``_has``, chains, ``_filter``, ``_query``, projections and counts for restricted
principals), operations by explicit rule only, narrowing of searches to the token's patient and to a single
granular scope, and what the response must be checked for. Unknown means deny.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from proxy.errors import ForbiddenError, InsufficientScopeError, NotFoundError
from proxy.fhir.compartment import PATIENT_COMPARTMENT_TYPES, compartment_search_params
from proxy.fhir.request import FhirRequest, Interaction, parse_query
from proxy.fhir.search_params import search_param
from proxy.policy.access import READ_PERMISSIONS, AccessView
from proxy.policy.decision import AccessDecision, ResponseCheck

__all__ = ["check_current", "check_operation_allowed", "decide", "decide_entries"]

_RESULT_CONTROL = frozenset({"_count", "_sort", "_include", "_revinclude", "_total", "_format", "_pretty"})
_REFUSED_ALWAYS = ("_has", "_filter", "_query")
_REFUSED_WHEN_RESTRICTED = ("_elements", "_contained", "_containedType")
_WRITE_PERMISSION = {
    Interaction.CREATE: "c",
    Interaction.UPDATE: "u",
    Interaction.PATCH: "u",
    Interaction.DELETE: "d",
}


def decide(
    view: AccessView,
    request: FhirRequest,
    document: dict[str, Any] | None = None,
    if_none_exist: str | None = None,
) -> AccessDecision:
    """The decision for one request (raises when it is denied)."""
    interaction = request.interaction
    if interaction in (Interaction.READ, Interaction.VREAD, Interaction.HISTORY_INSTANCE):
        return _instance_read(view, request)
    if interaction in (Interaction.SEARCH_TYPE, Interaction.SEARCH_COMPARTMENT):
        return _search(view, request)
    if interaction is Interaction.HISTORY_TYPE:
        return _type_history(view, request)
    if interaction in (Interaction.SEARCH_SYSTEM, Interaction.HISTORY_SYSTEM):
        return _system_wide(view, request)
    if interaction in _WRITE_PERMISSION:
        return _write(view, request, document, if_none_exist)
    if interaction in (Interaction.BATCH, Interaction.TRANSACTION):
        raise AssertionError("batch and transaction entries are decided by decide_entries")
    if interaction is Interaction.OPERATION:
        return _operation(view, request)
    raise ForbiddenError("this interaction is not allowed by the access policy")


def decide_entries(view: AccessView, entries: Sequence[tuple[FhirRequest, dict[str, Any] | None]]) -> None:
    """Authorise every entry of a batch/transaction on its own; one forbidden entry refuses the whole call."""
    for index, (request, resource) in enumerate(entries):
        try:
            decision = _entry(view, request, resource)
        except (ForbiddenError, NotFoundError) as error:
            raise ForbiddenError(f"Bundle.entry[{index}]: {error.message}") from error
        if decision.extra_params or decision.needs_current:
            raise ForbiddenError(
                f"Bundle.entry[{index}]: this request must be sent on its own, not in a batch "
                "(it needs narrowing or a check of the stored resource)"
            )


def _entry(view: AccessView, request: FhirRequest, resource: dict[str, Any] | None) -> AccessDecision:
    if request.interaction in (Interaction.BATCH, Interaction.TRANSACTION):
        raise ForbiddenError("nested batches are not allowed")
    return decide(view, request, resource)


def _require(view: AccessView, resource_type: str, permission: str) -> None:
    if not view.allows_type(resource_type, permission):
        raise InsufficientScopeError(f"no scope grants '{permission}' on {resource_type}")


def _instance_read(view: AccessView, request: FhirRequest) -> AccessDecision:
    assert request.resource_type is not None
    _require_any(view, request.resource_type, ("r",))
    _check_parameters(view, request, request.resource_type)
    check = (
        ResponseCheck.BUNDLE
        if request.interaction is Interaction.HISTORY_INSTANCE
        else ResponseCheck.RESOURCE
    )
    return AccessDecision(response=check, total_is_exact=False)


def _require_any(view: AccessView, resource_type: str, permissions: Sequence[str]) -> None:
    if not any(view.allows_type(resource_type, permission) for permission in permissions):
        raise InsufficientScopeError(f"no scope grants '{'/'.join(permissions)}' on {resource_type}")


def _search(view: AccessView, request: FhirRequest) -> AccessDecision:
    resource_type = request.resource_type
    assert resource_type is not None
    _require(view, resource_type, "s")
    _check_parameters(view, request, resource_type)
    if request.compartment is not None:
        return _compartment_search(view, request)
    if not view.restricted(resource_type, "s"):
        return AccessDecision()
    patient_params = _patient_narrowing(view, request, resource_type)
    granular, exact = _granular_narrowing(view, request, resource_type)
    return AccessDecision(
        extra_params=patient_params + granular,
        total_is_exact=exact,
        reason="search narrowed to the token's patient and scope",
    )


def _compartment_search(view: AccessView, request: FhirRequest) -> AccessDecision:
    compartment = request.compartment
    assert compartment is not None
    assert request.resource_type is not None
    if compartment.resource_type != "Patient":
        raise ForbiddenError("only Patient compartments can be searched")
    patient = view.principal.patient
    if view.restricted(request.resource_type, "s") and patient is not None and compartment.id != patient:
        raise ForbiddenError("the search names a patient other than the token's patient")
    granular, exact = _granular_narrowing(view, request, request.resource_type)
    return AccessDecision(
        extra_params=granular, total_is_exact=exact and _only_patient_context(view, request)
    )


def _only_patient_context(view: AccessView, request: FhirRequest) -> bool:
    return view.principal.patient is not None or not view.restricted(str(request.resource_type), "s")


def _patient_narrowing(
    view: AccessView, request: FhirRequest, resource_type: str
) -> tuple[tuple[str, str], ...]:
    """Add the compartment parameter for patient-context searches; refuse ones naming another patient."""
    scopes = view.scopes.grants(resource_type, "s")
    if not all(scope.context == "patient" for scope in scopes):
        return ()  # a user/system scope also grants this search: results are re-checked one by one
    patient = view.principal.patient
    if patient is None:
        raise ForbiddenError("patient/ scopes need a patient in the token's launch context")
    if resource_type == "Patient":
        if any(
            value != patient for key, values in request.params if key == "_id" for value in values.split(",")
        ):
            raise ForbiddenError("the search names a patient other than the token's patient")
        return (("_id", patient),)
    if resource_type not in PATIENT_COMPARTMENT_TYPES:
        return ()
    _check_named_patient(request, resource_type, patient)
    params = compartment_search_params(resource_type)
    narrowing = next(
        (name for name in ("patient", "subject") if _targets_patient(resource_type, name)),
        params[0] if params else None,
    )
    if narrowing is None or (narrowing, f"Patient/{patient}") in request.params:
        return ()
    return ((narrowing, f"Patient/{patient}"),)


def _targets_patient(resource_type: str, name: str) -> bool:
    definition = search_param(resource_type, name)
    return definition is not None and definition.type == "reference" and "Patient" in definition.targets


def _check_named_patient(request: FhirRequest, resource_type: str, patient: str) -> None:
    """Refuse a search whose reference parameters name a patient other than the token's."""
    for key, value in request.params:
        name, _, modifier = key.partition(":")
        if not _targets_patient(resource_type, name):
            continue
        definition = search_param(resource_type, name)
        only_patient = modifier == "Patient" or (
            definition is not None and definition.targets == ("Patient",)
        )
        for item in value.split(","):
            parts = item.rstrip("/").split("/")
            names_patient = parts[-2] == "Patient" if len(parts) >= 2 else only_patient
            if names_patient and parts[-1] != patient:
                raise ForbiddenError("the search names a patient other than the token's patient")


def _granular_narrowing(
    view: AccessView, request: FhirRequest, resource_type: str
) -> tuple[tuple[tuple[str, str], ...], bool]:
    """Append a single granular scope's criteria to the query; several alternatives are checked per result."""
    alternatives = view.scopes.criteria_alternatives(resource_type, "s")
    if alternatives is None:
        return (), True
    if len(alternatives) == 1:
        present = set(request.params)
        return tuple(item for item in alternatives[0] if item not in present), True
    return (), False


def _check_parameters(view: AccessView, request: FhirRequest, resource_type: str) -> None:
    """Refuse the query shapes that can reveal what the principal may not read."""
    restricted = view.restricted(resource_type, "s") or view.restricted(resource_type, "r")
    for key, value in request.params:
        name = key.split(":", 1)[0]
        if name.startswith(_REFUSED_ALWAYS):
            raise ForbiddenError(f"the search parameter {name} is not allowed through this proxy")
        if name.startswith("_") and name not in _RESULT_CONTROL:
            _check_special(name, value, restricted)
            continue
        if name in _RESULT_CONTROL:
            continue
        if "." in key or _is_typed_chain(key):
            _check_chain(view, resource_type, key)
        elif search_param(resource_type, name) is None:
            raise ForbiddenError(f"unknown search parameter {name} for {resource_type}")


def _check_special(name: str, value: str, restricted: bool) -> None:
    if restricted and name in _REFUSED_WHEN_RESTRICTED:
        raise ForbiddenError(f"{name} is not available to tokens restricted to a patient or a scope query")
    if name == "_summary" and restricted and value != "false":
        raise ForbiddenError("_summary is not available to tokens restricted to a patient or a scope query")


def _is_typed_chain(key: str) -> bool:
    return ":" in key and key.split(":", 1)[1][:1].isupper() and "." in key


def _check_chain(view: AccessView, resource_type: str, key: str) -> None:
    """Chained parameters read other resources: only for principals unrestricted on every possible target."""
    head = key.split(".", 1)[0]
    name, _, type_modifier = head.partition(":")
    definition = search_param(resource_type, name)
    if definition is None or definition.type != "reference":
        raise ForbiddenError(f"the chained parameter {key.split('.', 1)[0]} is not a reference parameter")
    targets = (type_modifier,) if type_modifier else definition.targets
    if not targets or any(view.restricted(target, "s") for target in targets):
        raise ForbiddenError("chained search parameters are only available to unrestricted tokens")


def _type_history(view: AccessView, request: FhirRequest) -> AccessDecision:
    assert request.resource_type is not None
    _require(view, request.resource_type, "s")
    _check_parameters(view, request, request.resource_type)
    return AccessDecision(total_is_exact=not view.restricted(request.resource_type, "s"))


def _system_wide(view: AccessView, request: FhirRequest) -> AccessDecision:
    types = [item for value in request.param_values("_type") for item in value.split(",") if item]
    if not types:
        if view.restricted("*", "s"):
            raise ForbiddenError("system-wide searches and history need an unrestricted system or user scope")
        return AccessDecision()
    for resource_type in types:
        _require(view, resource_type, "s")
        if view.restricted(resource_type, "s"):
            raise ForbiddenError("system-level search is not available to restricted tokens: search per type")
    return AccessDecision()


def _write(
    view: AccessView, request: FhirRequest, document: dict[str, Any] | None, if_none_exist: str | None
) -> AccessDecision:
    resource_type = request.resource_type
    assert resource_type is not None
    permission = _WRITE_PERMISSION[request.interaction]
    _require(view, resource_type, permission)
    if not view.may_write_type(resource_type):
        raise ForbiddenError(f"{resource_type} resources may only be written by authorised roles")
    restricted = view.restricted(resource_type, permission)
    if request.conditional:
        if restricted:
            raise ForbiddenError(
                "conditional update, patch and delete are only available to unrestricted tokens"
            )
        _require(view, resource_type, "s")
    writes_document = document is not None and request.interaction in (Interaction.CREATE, Interaction.UPDATE)
    if writes_document and not view.can_write(document or {}, permission):
        raise ForbiddenError("the resource, as it would be stored, is outside what the token may write")
    if request.interaction is Interaction.CREATE:
        return AccessDecision(
            response=ResponseCheck.RESOURCE,
            if_none_exist=_narrow_if_none_exist(view, resource_type, if_none_exist),
        )
    return AccessDecision(
        response=ResponseCheck.RESOURCE, needs_current=restricted and request.id is not None
    )


def _narrow_if_none_exist(view: AccessView, resource_type: str, criteria: str | None) -> str | None:
    """A conditional create's search part is a search: it needs 's' and is narrowed like one."""
    if criteria is None:
        return None
    _require(view, resource_type, "s")
    if not view.restricted(resource_type, "s"):
        return criteria
    search = FhirRequest(Interaction.SEARCH_TYPE, "GET", resource_type, params=parse_query(criteria))
    decision = _search(view, search)
    if not decision.total_is_exact:
        raise ForbiddenError(
            "this conditional create's criteria cannot be narrowed to what the token may see"
        )
    extra = "&".join(f"{name}={value}" for name, value in decision.extra_params)
    return f"{criteria}&{extra}" if extra else criteria


def check_current(view: AccessView, request: FhirRequest, current: dict[str, Any]) -> None:
    """Before update/patch/delete (or an instance operation): the stored resource must be visible, and
    writable by the principal when the request writes."""
    permission = _WRITE_PERMISSION.get(request.interaction)
    if not view.can_see(current, (*READ_PERMISSIONS, permission) if permission else READ_PERMISSIONS):
        raise NotFoundError() if view.settings.hide_existence else ForbiddenError()
    if permission is not None and not view.can_write(current, permission):
        raise ForbiddenError("the stored resource is outside what the token may write")


def check_operation_allowed(view: AccessView, request: FhirRequest) -> None:
    """Refuse an operation the policy has no rule for (before its body is even read)."""
    name = request.operation or ""
    if request.interaction is Interaction.OPERATION and name not in view.settings.allowed_operations:
        raise ForbiddenError(f"the operation ${name} is not allowed by the access policy")


def _operation(view: AccessView, request: FhirRequest) -> AccessDecision:
    check_operation_allowed(view, request)
    name = request.operation or ""
    level = request.level
    resource_type = request.resource_type
    if name == "everything" and level == "instance" and resource_type == "Patient":
        return _patient_everything(view, request)
    if name == "lastn" and level == "type" and resource_type == "Observation":
        search = FhirRequest(Interaction.SEARCH_TYPE, "GET", "Observation", params=request.params)
        return _search(view, search)
    if name == "validate" and resource_type is not None and level == "type":
        _require_any(view, resource_type, ("c", "u"))
        return AccessDecision(response=ResponseCheck.RESOURCE)
    if name in ("validate", "meta") and level == "instance" and resource_type is not None:
        _require_any(view, resource_type, READ_PERMISSIONS)
        return AccessDecision(response=ResponseCheck.RESOURCE, needs_current=True)
    raise ForbiddenError(f"${name} is not allowed at {level} level by the access policy")


def _patient_everything(view: AccessView, request: FhirRequest) -> AccessDecision:
    _require(view, "Patient", "r")
    patient = view.principal.patient
    if view.restricted("Patient", "r") and patient is not None and request.id != patient:
        raise ForbiddenError("$everything is only available for the token's own patient")
    return AccessDecision(total_is_exact=False)
