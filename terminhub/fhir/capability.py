"""The CapabilityStatement served at ``GET /fhir/metadata`` and the definitions it points to.

The contract asks for a statement that tells the truth: every resource, interaction, search parameter and
operation that works is declared, and nothing else. So nothing here is written out by hand: resources,
search parameters and includes come from ``searchparams`` (the same table the search engine runs on), and
operations from the ``OPERATIONS`` registry that the modules implementing them fill in. Every operation
declared gets an OperationDefinition served by this server and every search parameter terminhub adds a
SearchParameter, both built here from the same sources, so a declaration and its definition cannot part.
"""

from __future__ import annotations

from dataclasses import dataclass

from terminhub.config import Settings
from terminhub.fhir import searchparams
from terminhub.fhir.searchparams import SearchParam

FHIR_VERSION = "4.0.1"
HL7_SEARCH_PARAMETER = "http://hl7.org/fhir/SearchParameter/"
SECURITY_SERVICE_SYSTEM = "http://terminology.hl7.org/CodeSystem/restful-security-service"
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"

# Written by the server only (contract 2): readable, never writable through REST.
SERVER_WRITTEN: frozenset[str] = frozenset({"Provenance", "AuditEvent"})
# Conformance resources this server serves about itself (readable without a token).
DEFINITION_TYPES: tuple[str, ...] = ("OperationDefinition", "SearchParameter")

READ_INTERACTIONS: tuple[str, ...] = ("read", "vread", "history-instance", "history-type", "search-type")
WRITE_INTERACTIONS: tuple[str, ...] = ("create", "update", "delete")
DEFINITION_INTERACTIONS: tuple[str, ...] = ("read", "search-type")
SYSTEM_INTERACTIONS: tuple[str, ...] = ("transaction", "batch", "history-system")


# --------------------------------------------------------------------------------------------------
# Operations registry
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OperationParam:
    """One parameter of an operation; ``part`` for a tuple parameter (then ``type`` stays None)."""

    name: str
    use: str  # "in" | "out"
    min: int
    max: str  # "1", "*", ...
    type: str | None = None
    documentation: str = ""
    part: tuple[OperationParam, ...] = ()


@dataclass(frozen=True)
class Operation:
    """An operation the server offers; ``resource`` empty for a system-level one.

    ``url`` is the canonical the national guides assign (e.g. the Austrian ``slot-hold``); None means
    terminhub's own ``{base_url}/fhir/OperationDefinition/{code}``.
    """

    code: str
    name: str
    resource: tuple[str, ...]
    system: bool
    type: bool
    instance: bool
    url: str | None
    description: str
    parameters: tuple[OperationParam, ...]
    affects_state: bool = True


OPERATIONS: dict[str, Operation] = {}


def register_operation(op: Operation) -> None:
    """Declare an operation; registering the same one twice is harmless, a different one under the
    same code is a programming error (two modules would answer one URL)."""
    if not op.system and not (op.resource and (op.type or op.instance)):
        raise ValueError(f"operation ${op.code} is invoked nowhere (no system level, no resource)")
    existing = OPERATIONS.get(op.code)
    if existing is not None and existing != op:
        raise ValueError(f"operation ${op.code} is already registered differently")
    OPERATIONS[op.code] = op


def _base(settings: Settings) -> str:
    return settings.base_url.rstrip("/")


def operation_url(op: Operation, settings: Settings) -> str:
    """The canonical URL of an operation's definition."""
    return op.url or f"{_base(settings)}/fhir/OperationDefinition/{op.code}"


# --------------------------------------------------------------------------------------------------
# Search parameters
# --------------------------------------------------------------------------------------------------

# 116117 clients page by number; terminhub defines it (contract 2, Paging).
PAGE_PARAM = SearchParam(
    "page",
    "number",
    description="Page number, 1-based: page N holds matches (N-1)*_count+1 ... N*_count of the current data; "
    "beyond the last page the Bundle has no entries and no next link.",
    own=True,
)
PAGE_PARAM_ID = "Resource-page"

# The table's kinds by the R4 SearchParamType they are declared with.
_KIND_TO_R4 = {
    "number": "number",
    "token": "token",
    "reference": "reference",
    "date": "date",
    "string": "string",
    "uri": "uri",
    "special": "special",
    "quantity": "quantity",
    "composite": "composite",
}
# The table marks parameters "special" when the engine matches them in its own way; on the wire these
# are HL7's token parameters and are declared as such.
_R4_TYPE_OVERRIDES: dict[tuple[str, str], str] = {
    ("Slot", "service-type"): "token",
    ("Slot", "specialty"): "token",
}
# HL7 defines some parameters once for many types (R4 ids other than "<Type>-<name>").
_HL7_IDS: dict[tuple[str, str], str] = {
    ("Patient", "family"): "individual-family",
    ("Patient", "given"): "individual-given",
    ("Patient", "birthdate"): "individual-birthdate",
    ("Patient", "gender"): "individual-gender",
    ("Practitioner", "family"): "individual-family",
    ("Practitioner", "given"): "individual-given",
    ("Practitioner", "gender"): "individual-gender",
    ("ServiceRequest", "identifier"): "clinical-identifier",
    ("ServiceRequest", "patient"): "clinical-patient",
    ("OperationDefinition", "url"): "conformance-url",
    ("SearchParameter", "url"): "conformance-url",
}
_COMMON_DEFINITIONS = {
    "_id": ("token", HL7_SEARCH_PARAMETER + "Resource-id", "Logical id of the resource"),
    "_lastUpdated": (
        "date",
        HL7_SEARCH_PARAMETER + "Resource-lastUpdated",
        "When the resource version last changed",
    ),
}


def r4_search_type(resource_type: str, param: SearchParam) -> str:
    """The R4 ``SearchParamType`` a table entry is declared with."""
    override = _R4_TYPE_OVERRIDES.get((resource_type, param.name))
    if override:
        return override
    try:
        return _KIND_TO_R4[param.kind]
    except KeyError:
        raise ValueError(f"{resource_type}.{param.name}: kind {param.kind!r} has no R4 type") from None


def own_parameter_id(resource_type: str, name: str) -> str:
    return f"{resource_type}-{name}"


def own_parameter_url(parameter_id: str, settings: Settings) -> str:
    return f"{_base(settings)}/fhir/SearchParameter/{parameter_id}"


def search_parameter_definition(resource_type: str, param: SearchParam, settings: Settings) -> str:
    """The canonical a declared parameter points to: terminhub's own or HL7's."""
    if param.own:
        return own_parameter_url(own_parameter_id(resource_type, param.name), settings)
    hl7_id = _HL7_IDS.get((resource_type, param.name), f"{resource_type}-{param.name}")
    return HL7_SEARCH_PARAMETER + hl7_id


def own_parameters() -> list[tuple[str, SearchParam]]:
    """(base type, parameter) of every parameter terminhub defines itself; ``page`` first."""
    own: list[tuple[str, SearchParam]] = [("Resource", PAGE_PARAM)]
    for resource_type, params in searchparams.PARAMS.items():
        own.extend((resource_type, p) for p in params.values() if p.own)
    return own


def _expression(resource_type: str, param: SearchParam) -> str | None:
    if param.expression:
        return param.expression
    if not param.paths:
        return None
    return " | ".join(f"{resource_type}.{path}" for path in param.paths)


def search_parameter_resource(base_type: str, param: SearchParam, settings: Settings) -> dict:
    """The SearchParameter resource for one of terminhub's own parameters."""
    pid = PAGE_PARAM_ID if param is PAGE_PARAM else own_parameter_id(base_type, param.name)
    r4_type = "number" if param is PAGE_PARAM else r4_search_type(base_type, param)
    resource: dict = {
        "resourceType": "SearchParameter",
        "id": pid,
        "url": own_parameter_url(pid, settings),
        "name": pid.replace("-", "_"),
        "status": "active",
        "experimental": False,
        "publisher": "terminhub",
        "description": param.description or f"{param.name} of {base_type} (terminhub)",
        "code": param.name,
        "base": [base_type],
        "type": r4_type,
    }
    expression = _expression(base_type, param)
    if expression:
        resource["expression"] = expression
    if r4_type == "reference" and param.targets:
        resource["target"] = list(param.targets)
    return resource


def search_parameter_resources(settings: Settings) -> list[dict]:
    """SearchParameter resources for every parameter terminhub adds (``page``, later ``bsnr``, ``lanr``)."""
    return [search_parameter_resource(base, p, settings) for base, p in own_parameters()]


# --------------------------------------------------------------------------------------------------
# OperationDefinition
# --------------------------------------------------------------------------------------------------


def _operation_parameter(param: OperationParam) -> dict:
    out: dict = {"name": param.name, "use": param.use, "min": param.min, "max": param.max}
    if param.documentation:
        out["documentation"] = param.documentation
    if param.type:
        out["type"] = param.type
    if param.part:
        out["part"] = [_operation_parameter(p) for p in param.part]
    return out


def operation_definition(op: Operation, settings: Settings) -> dict:
    """The R4 OperationDefinition of a registered operation, id = its code."""
    resource: dict = {
        "resourceType": "OperationDefinition",
        "id": op.code,
        "url": operation_url(op, settings),
        "name": op.name,
        "status": "active",
        "kind": "operation",
        "publisher": "terminhub",
        "description": op.description or op.name,
        "affectsState": op.affects_state,
        "code": op.code,
        "system": op.system,
        "type": op.type,
        "instance": op.instance,
    }
    if op.resource:
        resource["resource"] = list(op.resource)
    if op.parameters:
        resource["parameter"] = [_operation_parameter(p) for p in op.parameters]
    return resource


# --------------------------------------------------------------------------------------------------
# Serving the definitions
# --------------------------------------------------------------------------------------------------


def definitions(
    resource_type: str, settings: Settings, *, url: str | None = None, code: str | None = None
) -> list[dict]:
    """All OperationDefinitions or SearchParameters this server serves, optionally filtered by the
    ``url`` and ``code`` search parameters declared for them; [] for any other type."""
    if resource_type == "OperationDefinition":
        found = [operation_definition(op, settings) for op in OPERATIONS.values()]
    elif resource_type == "SearchParameter":
        found = search_parameter_resources(settings)
    else:
        return []
    if url is not None:
        found = [r for r in found if r["url"] == url]
    if code is not None:
        found = [r for r in found if r["code"] == code]
    return found


def definition_lookup(resource_type: str, id: str, settings: Settings) -> dict | None:
    """One served definition by id (``GET /fhir/OperationDefinition/{id}``), None when unknown."""
    return next((r for r in definitions(resource_type, settings) if r["id"] == id), None)


# --------------------------------------------------------------------------------------------------
# CapabilityStatement
# --------------------------------------------------------------------------------------------------


def _search_param_entry(name: str, definition: str, r4_type: str, documentation: str) -> dict:
    entry = {"name": name, "definition": definition, "type": r4_type}
    if documentation:
        entry["documentation"] = documentation
    return entry


def _search_params(resource_type: str, settings: Settings) -> list[dict]:
    entries: dict[str, dict] = {}
    for name, (r4_type, definition, doc) in _COMMON_DEFINITIONS.items():
        entries[name] = _search_param_entry(name, definition, r4_type, doc)
    for p in searchparams.PARAMS.get(resource_type, {}).values():
        entries[p.name] = _search_param_entry(
            p.name,
            search_parameter_definition(resource_type, p, settings),
            r4_search_type(resource_type, p),
            p.description,
        )
    entries[PAGE_PARAM.name] = _search_param_entry(
        PAGE_PARAM.name, own_parameter_url(PAGE_PARAM_ID, settings), "number", PAGE_PARAM.description
    )
    return list(entries.values())


def _rev_includes(resource_type: str) -> list[str]:
    """``Source:param`` of every _revinclude that can bring resources to a search of this type."""
    found = []
    for source, name in searchparams.REVINCLUDES:
        param = searchparams.param(source, name)
        targets = param.targets if param and param.targets else searchparams.RESOURCE_TYPES
        if resource_type in targets:
            found.append(f"{source}:{name}")
    return found


def _operation_entry(op: Operation, settings: Settings) -> dict:
    entry = {"name": op.code, "definition": operation_url(op, settings)}
    if op.description:
        entry["documentation"] = op.description
    return entry


def _resource_entry(resource_type: str, settings: Settings) -> dict:
    interactions = list(READ_INTERACTIONS)
    if resource_type not in SERVER_WRITTEN:
        interactions += WRITE_INTERACTIONS
    entry: dict = {
        "type": resource_type,
        "interaction": [{"code": code} for code in interactions],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": resource_type not in SERVER_WRITTEN,
        "conditionalCreate": resource_type not in SERVER_WRITTEN,
        "conditionalUpdate": False,
        "conditionalDelete": "not-supported",
        "searchInclude": [f"{resource_type}:{name}" for name in searchparams.INCLUDES.get(resource_type, ())],
        "searchRevInclude": _rev_includes(resource_type),
        "searchParam": _search_params(resource_type, settings),
        "operation": [
            _operation_entry(op, settings)
            for op in OPERATIONS.values()
            if resource_type in op.resource and (op.type or op.instance)
        ],
    }
    if resource_type in SERVER_WRITTEN:
        entry["documentation"] = "Written by the server only; create, update and delete answer 405."
    return {k: v for k, v in entry.items() if v != []}


def _definition_entry(resource_type: str, settings: Settings) -> dict:
    params = [
        _search_param_entry(
            p.name,
            search_parameter_definition(resource_type, p, settings),
            r4_search_type(resource_type, p),
            p.description,
        )
        for p in searchparams.PARAMS.get(resource_type, {}).values()
    ]
    entry: dict = {
        "type": resource_type,
        "documentation": "Definitions this server serves about itself; readable without a token.",
        "interaction": [{"code": code} for code in DEFINITION_INTERACTIONS],
    }
    if params:
        entry["searchParam"] = params
    return entry


def capability_statement(settings: Settings, software_version: str, published: str) -> dict:
    """The instance CapabilityStatement for ``GET /fhir/metadata``; ``published`` is its ``date``."""
    base = _base(settings)
    security = {
        "cors": True,
        "service": [
            {
                "coding": [
                    {"system": SECURITY_SERVICE_SYSTEM, "code": "SMART-on-FHIR", "display": "SMART-on-FHIR"}
                ],
                "text": "OAuth2 client credentials (SMART Backend Services style)",
            }
        ],
        "extension": [
            {
                "url": OAUTH_URIS,
                "extension": [{"url": "token", "valueUri": f"{base}/auth/token"}],
            }
        ],
        "description": "Every call except metadata and the definitions needs a Bearer token from "
        f"{base}/auth/token (grant_type=client_credentials).",
    }
    rest: dict = {
        "mode": "server",
        "documentation": "terminhub FHIR R4 appointment-booking server",
        "security": security,
        "resource": [_resource_entry(t, settings) for t in searchparams.RESOURCE_TYPES]
        + [_definition_entry(t, settings) for t in DEFINITION_TYPES],
        "interaction": [{"code": code} for code in SYSTEM_INTERACTIONS],
    }
    system_ops = [_operation_entry(op, settings) for op in OPERATIONS.values() if op.system]
    if system_ops:
        rest["operation"] = system_ops
    return {
        "resourceType": "CapabilityStatement",
        "url": f"{settings.fhir_base}/metadata",
        "version": software_version,
        "name": "TerminHub",
        "title": f"terminhub – {settings.system_name}",
        "status": "active",
        "experimental": False,
        "date": published,
        "publisher": "terminhub",
        "description": "Appointment booking: slots, holds, bookings and referral codes "
        "(116117, HL7 Austria).",
        "kind": "instance",
        "software": {"name": "terminhub", "version": software_version},
        "implementation": {"description": settings.system_name, "url": settings.fhir_base},
        "fhirVersion": FHIR_VERSION,
        "format": ["json", "xml", "application/fhir+json", "application/fhir+xml"],
        "rest": [rest],
    }
