"""The CapabilityStatement tells the truth: what the tables and the operation registry say, nothing else,
and every definition it points to is served by this server."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class

from terminhub.config import Settings
from terminhub.fhir import searchparams
from terminhub.fhir.capability import (
    OPERATIONS,
    Operation,
    OperationParam,
    capability_statement,
    definition_lookup,
    definitions,
    operation_definition,
    register_operation,
    search_parameter_resources,
)
from terminhub.fhir.searchparams import SearchParam

BASE = "https://hub.example.org"
HL7 = "http://hl7.org/fhir/SearchParameter/"
AT_HOLD = "http://hl7.at/fhir/TC-FHIR-AG-Scheduling-R5/R5/OperationDefinition/slot-hold"
ALWAYS = {"read", "vread", "history-instance", "history-type", "search-type"}
WRITES = {"create", "update", "delete"}
# Independent of the module: the R4 type each kind of the table is declared with.
EXPECTED_TYPE = {
    "token": "token",
    "reference": "reference",
    "date": "date",
    "string": "string",
    "uri": "uri",
    "number": "number",
    "special": "special",
}
HL7_TOKEN_SPECIALS = {("Slot", "service-type"), ("Slot", "specialty")}


@pytest.fixture
def settings() -> Settings:
    return Settings(base_url=BASE)


@pytest.fixture(autouse=True)
def only_these_operations() -> Iterator[None]:
    """Faces register their operations when imported (as other test modules do): each test here sees the
    operations it registers itself, and the registry is as before afterwards."""
    registered = dict(OPERATIONS)
    OPERATIONS.clear()
    try:
        yield
    finally:
        OPERATIONS.clear()
        OPERATIONS.update(registered)


def _validate(resource: dict) -> None:
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def _statement(settings: Settings) -> dict:
    return capability_statement(settings, "1.2.3", "2025-03-01T10:00:00+01:00")


def _rest(settings: Settings) -> dict:
    return _statement(settings)["rest"][0]


def _resource(settings: Settings, resource_type: str) -> dict:
    matches = [r for r in _rest(settings)["resource"] if r["type"] == resource_type]
    assert len(matches) == 1, resource_type
    return matches[0]


def _sample_op(code: str = "test-hold", **changes: object) -> Operation:
    fields: dict = dict(
        code=code,
        name="TestSlotHold",
        resource=("Slot",),
        system=False,
        type=False,
        instance=True,
        url=None,
        description="Hold a Slot for a while (test)",
        parameters=(
            OperationParam("duration", "in", 0, "1", "integer", "minutes"),
            OperationParam(
                "who",
                "in",
                0,
                "*",
                documentation="a tuple",
                part=(OperationParam("name", "in", 1, "1", "string"),),
            ),
            OperationParam("return", "out", 1, "1", "Slot", "the held Slot"),
        ),
    )
    fields.update(changes)
    return Operation(**fields)


@pytest.fixture
def sample_op() -> Iterator[Operation]:
    op = _sample_op()
    register_operation(op)
    try:
        yield op
    finally:
        OPERATIONS.pop(op.code, None)


@pytest.fixture
def more_ops() -> Iterator[list[Operation]]:
    ops = [
        _sample_op(
            "test-find",
            name="TestFind",
            resource=(),
            system=True,
            instance=False,
            parameters=(OperationParam("return", "out", 1, "1", "Bundle"),),
            affects_state=False,
        ),
        _sample_op("test-at-hold", name="TestAtHold", url=AT_HOLD, type=True),
    ]
    for op in ops:
        register_operation(op)
    try:
        yield ops
    finally:
        for op in ops:
            OPERATIONS.pop(op.code, None)


@pytest.fixture
def own_bsnr(monkeypatch: pytest.MonkeyPatch) -> SearchParam:
    param = SearchParam(
        "test-bsnr",
        "token",
        ("participant.actor.identifier",),
        description="BSNR of the practice (test)",
        own=True,
    )
    monkeypatch.setitem(searchparams.PARAMS["Appointment"], param.name, param)
    return param


# ---- the statement itself ---------------------------------------------------------------------------


def test_statement_validates_and_carries_the_basics(settings: Settings) -> None:
    cs = _statement(settings)
    _validate(cs)
    assert cs["status"] == "active" and cs["kind"] == "instance" and cs["fhirVersion"] == "4.0.1"
    assert {"json", "xml"} <= set(cs["format"])
    assert cs["implementation"]["url"] == f"{BASE}/fhir"
    assert cs["software"] == {"name": "terminhub", "version": "1.2.3"}
    assert cs["date"] == "2025-03-01T10:00:00+01:00"
    assert orjson.loads(orjson.dumps(cs)) == cs  # plain JSON, nothing a serializer could trip on


def test_statement_with_operations_and_own_parameters_validates(
    settings: Settings, sample_op: Operation, more_ops: list[Operation], own_bsnr: SearchParam
) -> None:
    _validate(_statement(settings))


def test_rest_security_is_smart_with_token_endpoint(settings: Settings) -> None:
    rest = _rest(settings)
    assert rest["mode"] == "server"
    codings = [c for s in rest["security"]["service"] for c in s["coding"]]
    service = "http://terminology.hl7.org/CodeSystem/restful-security-service"
    assert {"system": service, "code": "SMART-on-FHIR"}.items() <= codings[0].items()
    oauth_uris = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    (oauth,) = [e for e in rest["security"]["extension"] if e["url"] == oauth_uris]
    assert {"url": "token", "valueUri": f"{BASE}/auth/token"} in oauth["extension"]


def test_trailing_slash_in_base_url_gives_clean_urls() -> None:
    rest = _rest(Settings(base_url=BASE + "/"))
    (oauth,) = rest["security"]["extension"]
    assert oauth["extension"][0]["valueUri"] == f"{BASE}/auth/token"
    page = next(p for p in rest["resource"][0]["searchParam"] if p["name"] == "page")
    assert page["definition"] == f"{BASE}/fhir/SearchParameter/Resource-page"


def test_system_interactions(settings: Settings) -> None:
    assert {i["code"] for i in _rest(settings)["interaction"]} == {"transaction", "batch", "history-system"}


# ---- resources and interactions ----------------------------------------------------------------------


def test_exactly_the_served_types_and_the_definition_types(settings: Settings) -> None:
    types = [r["type"] for r in _rest(settings)["resource"]]
    assert len(types) == len(set(types))
    assert set(types) == set(searchparams.RESOURCE_TYPES) | {"OperationDefinition", "SearchParameter"}


@pytest.mark.parametrize("resource_type", searchparams.RESOURCE_TYPES)
def test_interactions_per_type(settings: Settings, resource_type: str) -> None:
    res = _resource(settings, resource_type)
    codes = {i["code"] for i in res["interaction"]}
    if resource_type in {"Provenance", "AuditEvent"}:
        assert codes == ALWAYS
        assert not res.get("updateCreate") and not res.get("conditionalCreate")
    else:
        assert codes == ALWAYS | WRITES
        assert res["updateCreate"] is True and res["conditionalCreate"] is True
    assert res["versioning"] == "versioned-update" and res["readHistory"] is True
    assert res["conditionalUpdate"] is False and res["conditionalDelete"] == "not-supported"


@pytest.mark.parametrize("resource_type", ["OperationDefinition", "SearchParameter"])
def test_definition_types_are_read_only(settings: Settings, resource_type: str) -> None:
    res = _resource(settings, resource_type)
    codes = {i["code"] for i in res["interaction"]}
    assert "read" in codes and not codes & (WRITES | {"vread", "history-instance", "history-type"})
    for p in res.get("searchParam", []):
        assert p["name"] in searchparams.PARAMS[resource_type]


# ---- search parameters -------------------------------------------------------------------------------


@pytest.mark.parametrize("resource_type", searchparams.RESOURCE_TYPES)
def test_every_table_parameter_is_declared_with_its_type(settings: Settings, resource_type: str) -> None:
    declared = _resource(settings, resource_type)["searchParam"]
    names = [p["name"] for p in declared]
    assert len(names) == len(set(names))  # cpb-12
    by_name = {p["name"]: p for p in declared}
    for name, param in searchparams.PARAMS[resource_type].items():
        expected = "token" if (resource_type, name) in HL7_TOKEN_SPECIALS else EXPECTED_TYPE[param.kind]
        assert by_name[name]["type"] == expected, name
        if param.own:
            assert by_name[name]["definition"] == f"{BASE}/fhir/SearchParameter/{resource_type}-{name}"
        else:
            assert by_name[name]["definition"].startswith(HL7), name
    assert by_name["_id"]["type"] == "token" and by_name["_lastUpdated"]["type"] == "date"
    assert by_name["page"] == {
        **by_name["page"],
        "type": "number",
        "definition": f"{BASE}/fhir/SearchParameter/Resource-page",
    }
    # nothing declared that the table (or the engine's common parameters) does not serve
    assert set(names) == set(searchparams.PARAMS[resource_type]) | set(searchparams.COMMON) | {"page"}


def test_hl7_definitions_use_the_shared_ids_where_hl7_has_them(settings: Settings) -> None:
    patient = {p["name"]: p["definition"] for p in _resource(settings, "Patient")["searchParam"]}
    assert patient["family"] == HL7 + "individual-family"
    assert patient["identifier"] == HL7 + "Patient-identifier"
    slot = {p["name"]: p["definition"] for p in _resource(settings, "Slot")["searchParam"]}
    assert slot["schedule"] == HL7 + "Slot-schedule"


def test_page_search_parameter_resolves_and_validates(settings: Settings) -> None:
    url = f"{BASE}/fhir/SearchParameter/Resource-page"
    page = definition_lookup("SearchParameter", "Resource-page", settings)
    assert page is not None
    _validate(page)
    assert page["url"] == url and page["code"] == "page" and page["type"] == "number"
    assert page["status"] == "active" and page["description"]
    assert definitions("SearchParameter", settings, url=url) == [page]


def test_own_table_parameter_gets_its_search_parameter(settings: Settings, own_bsnr: SearchParam) -> None:
    declared = {p["name"]: p for p in _resource(settings, "Appointment")["searchParam"]}
    url = f"{BASE}/fhir/SearchParameter/Appointment-test-bsnr"
    assert declared["test-bsnr"]["definition"] == url and declared["test-bsnr"]["type"] == "token"
    sp = definition_lookup("SearchParameter", "Appointment-test-bsnr", settings)
    assert sp is not None
    _validate(sp)
    assert sp["url"] == url and sp["base"] == ["Appointment"] and sp["code"] == "test-bsnr"
    assert sp["expression"] == "Appointment.participant.actor.identifier"
    ids = [r["id"] for r in search_parameter_resources(settings)]
    assert ids == ["Resource-page", "Appointment-bsnr", "Appointment-lanr", "Appointment-test-bsnr"]


@pytest.mark.parametrize("name", ["bsnr", "lanr"])
def test_practice_sync_parameters_are_declared_with_their_search_parameters(
    settings: Settings, name: str
) -> None:
    """`bsnr` and `lanr` (contract 5) are terminhub's own Appointment parameters, each with its definition."""
    declared = {p["name"]: p for p in _resource(settings, "Appointment")["searchParam"]}
    url = f"{BASE}/fhir/SearchParameter/Appointment-{name}"
    assert declared[name]["definition"] == url and declared[name]["type"] == "token"
    sp = definition_lookup("SearchParameter", f"Appointment-{name}", settings)
    assert sp is not None
    _validate(sp)
    assert sp["url"] == url and sp["base"] == ["Appointment"] and sp["code"] == name
    assert sp["description"] and sp["expression"].startswith("Appointment.slot.resolve()")


# ---- includes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("resource_type", searchparams.RESOURCE_TYPES)
def test_includes_and_revincludes_as_in_the_table(settings: Settings, resource_type: str) -> None:
    res = _resource(settings, resource_type)
    expected = [f"{resource_type}:{name}" for name in searchparams.INCLUDES.get(resource_type, ())]
    assert res.get("searchInclude", []) == expected
    rev = set(res.get("searchRevInclude", []))
    assert "Provenance:target" in rev
    assert ("Slot:schedule" in rev) == (resource_type == "Schedule")
    assert rev <= {f"{s}:{n}" for s, n in searchparams.REVINCLUDES}


# ---- operations --------------------------------------------------------------------------------------


def test_registered_operation_is_declared_on_its_resource(settings: Settings, sample_op: Operation) -> None:
    url = f"{BASE}/fhir/OperationDefinition/test-hold"
    slot_ops = _resource(settings, "Slot")["operation"]
    assert {"name": "test-hold", "definition": url}.items() <= slot_ops[0].items()
    assert "operation" not in _rest(settings)  # instance-level only
    assert all("operation" not in r for r in _rest(settings)["resource"] if r["type"] != "Slot")

    od = definition_lookup("OperationDefinition", "test-hold", settings)
    assert od == operation_definition(sample_op, settings)
    _validate(od)
    assert od["url"] == url and od["code"] == "test-hold" and od["resource"] == ["Slot"]
    assert (od["system"], od["type"], od["instance"], od["affectsState"]) == (False, False, True, True)
    assert od["status"] == "active" and od["kind"] == "operation"
    by_name = {p["name"]: p for p in od["parameter"]}
    assert by_name["duration"] == {
        "name": "duration",
        "use": "in",
        "min": 0,
        "max": "1",
        "type": "integer",
        "documentation": "minutes",
    }
    assert by_name["who"]["part"] == [{"name": "name", "use": "in", "min": 1, "max": "1", "type": "string"}]


def test_system_operation_and_external_canonical(settings: Settings, more_ops: list[Operation]) -> None:
    rest = _rest(settings)
    assert [o["name"] for o in rest["operation"]] == ["test-find"]
    assert rest["operation"][0]["definition"] == f"{BASE}/fhir/OperationDefinition/test-find"
    slot_ops = {o["name"]: o["definition"] for o in _resource(settings, "Slot")["operation"]}
    assert slot_ops == {"test-at-hold": AT_HOLD}
    od = definition_lookup("OperationDefinition", "test-at-hold", settings)
    assert od is not None and od["url"] == AT_HOLD
    assert definitions("OperationDefinition", settings, url=AT_HOLD) == [od]
    find = definition_lookup("OperationDefinition", "test-find", settings)
    assert find is not None and "resource" not in find and find["affectsState"] is False
    _validate(find)


def test_register_operation_is_idempotent_and_refuses_conflicts(sample_op: Operation) -> None:
    register_operation(sample_op)
    assert OPERATIONS["test-hold"] is sample_op
    with pytest.raises(ValueError):
        register_operation(_sample_op(description="something else"))
    with pytest.raises(ValueError):
        register_operation(_sample_op("test-nowhere", resource=(), instance=False))
    assert "test-nowhere" not in OPERATIONS


def test_unknown_definitions_are_none(settings: Settings) -> None:
    assert definition_lookup("OperationDefinition", "no-such-op", settings) is None
    assert definition_lookup("SearchParameter", "Slot-schedule", settings) is None  # HL7's, not ours
    assert definition_lookup("Patient", "Resource-page", settings) is None
    assert definitions("Patient", settings) == []


# ---- the truthful property, generically ---------------------------------------------------------------


def _check_parameter_types(params: list[dict]) -> None:
    for p in params:
        assert p.get("type") or p.get("part"), p["name"]  # opd-1
        _check_parameter_types(p.get("part", []))


def test_every_declared_definition_is_served(
    settings: Settings, sample_op: Operation, more_ops: list[Operation], own_bsnr: SearchParam
) -> None:
    rest = _rest(settings)
    declared_ops = list(rest.get("operation", []))
    declared_params = []
    for res in rest["resource"]:
        declared_ops += res.get("operation", [])
        declared_params += res.get("searchParam", [])
    assert declared_ops  # the fixtures' operations are there

    for entry in declared_ops:
        (od,) = definitions("OperationDefinition", settings, url=entry["definition"])
        assert definition_lookup("OperationDefinition", od["id"], settings) == od
        assert od["code"] == entry["name"]
        _validate(od)
        _check_parameter_types(od.get("parameter", []))

    own_urls = {p["definition"] for p in declared_params if not p["definition"].startswith(HL7)}
    assert own_urls  # at least page
    for url in own_urls:
        assert url.startswith(f"{BASE}/fhir/SearchParameter/")
        (sp,) = definitions("SearchParameter", settings, url=url)
        assert definition_lookup("SearchParameter", url.rsplit("/", 1)[1], settings) == sp
        _validate(sp)

    # and the other way round: nothing served that the statement does not declare
    assert {sp["url"] for sp in search_parameter_resources(settings)} == own_urls
    assert {od["url"] for od in definitions("OperationDefinition", settings)} == {
        e["definition"] for e in declared_ops
    }
    # every registered operation is declared somewhere
    assert {op.code for op in OPERATIONS.values()} <= {e["name"] for e in declared_ops}
