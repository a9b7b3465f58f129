"""FHIR `Parameters` in and out of operations, checked against the operation's own declaration.

Every operation declares its parameters once (`capability.OperationParam`, also served in its
OperationDefinition); the reader checks a call against that declaration, so that what a definition
promises and what a handler accepts cannot part. Refusals are 400 `invalid` with a text that names the
parameter and, for unknown names, lists the expected ones. A GET operation passes its parameters in the
URL: `read_query` turns them into the same Parameters resource and reads that.

    inputs = read_parameters(call.resource(), HOLD_PARAMS, "$hold")
    status = inputs.one("slot-status")            # the valueCode, type checked
    out = ParametersBuilder().resource("slot", stored_bytes).value("held-until", "valueDateTime", t)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from terminhub.fhir import structure
from terminhub.fhir.capability import OperationParam
from terminhub.fhir.outcome import FhirError

RESOURCE = "resource"
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")
# The JSON type each FHIR primitive has in FHIR JSON (everything else is a string).
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "boolean": (bool,),
    "integer": (int,),
    "positiveInt": (int,),
    "unsignedInt": (int,),
    "decimal": (int, float),
}
# Result controls of the FHIR conventions that may ride along in a URL; ignored unless declared.
URL_CONTROLS = frozenset({"_format", "_pretty", "_summary", "_elements", "_count"})


# -- value[x] -----------------------------------------------------------------------------------------
def value_key(fhir_type: str) -> str:
    """The element a parameter of this type is carried in: `resource`, or `value` + the type."""
    if fhir_type == "Resource" or structure.is_resource_type(fhir_type):
        return RESOURCE
    return "value" + fhir_type[:1].upper() + fhir_type[1:]


# value[x] suffixes of the primitives that FHIR JSON writes as strings.
_STRINGS = frozenset(
    {
        "Base64Binary",
        "Canonical",
        "Code",
        "Date",
        "DateTime",
        "Id",
        "Instant",
        "Markdown",
        "Oid",
        "String",
        "Time",
        "Uri",
        "Url",
        "Uuid",
    }
)


def _right_json_type(value: Any, key: str) -> bool:
    """Primitives carry their JSON type, complex values an object, resources an object with resourceType."""
    if key == RESOURCE:
        return isinstance(value, dict) and isinstance(value.get("resourceType"), str)
    if key == "part":
        return isinstance(value, list) and all(isinstance(p, dict) for p in value)
    suffix = key.removeprefix("value")
    primitive = suffix[:1].lower() + suffix[1:]
    if primitive in _JSON_TYPES:
        is_bool = isinstance(value, bool)
        return isinstance(value, _JSON_TYPES[primitive]) and is_bool == (primitive == "boolean")
    if suffix in _STRINGS:
        return isinstance(value, str) and value.strip() != ""
    return isinstance(value, dict)


def _has_control(value: Any) -> bool:
    """FHIR strings hold no control characters but tab, CR and LF (and a database cannot store NUL)."""
    if isinstance(value, str):
        return bool(_CONTROL.search(value))
    if isinstance(value, dict):
        return any(_has_control(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_control(v) for v in value)
    return False


# -- the generic reader --------------------------------------------------------------------------------
def parameters_of(resource: dict) -> list[dict]:
    """The `parameter` list of a Parameters resource; 400 for any other body or a malformed list."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Parameters":
        found = resource.get("resourceType") if isinstance(resource, dict) else None
        raise FhirError(
            "invalid", f"The body must be a Parameters resource, not {found or 'something else'}."
        )
    items = resource.get("parameter", [])
    if not isinstance(items, list) or not all(
        isinstance(p, dict) and isinstance(p.get("name"), str) and p["name"] for p in items
    ):
        raise FhirError("invalid", "Every entry of Parameters.parameter needs a name.")
    return items


def check_names(params: dict, expected: Iterable[str], operation: str = "this operation") -> None:
    """400 naming the unknown parameters and listing the expected ones."""
    _refuse_unknown({p["name"] for p in parameters_of(params)}, list(expected), operation)


def _refuse_unknown(names: set[str], allowed: list[str], operation: str) -> None:
    unknown = sorted(names - set(allowed))
    if unknown:
        raise FhirError(
            "invalid",
            f"Unknown parameter{'s' if len(unknown) > 1 else ''} for {operation}: {', '.join(unknown)}; "
            f"expected: {', '.join(allowed)}.",
        )


def values_of(params: dict, name: str, key: str) -> list[Any]:
    """Every value of the parameter `name`, each of which must be given as `key` (valueCode, resource…)."""
    found = []
    for entry in parameters_of(params):
        if entry["name"] != name:
            continue
        given = [k for k in entry if k == RESOURCE or k.startswith("value") or k == "part"]
        if given != [key]:
            shown = " and ".join(given) or "no value"
            raise FhirError(
                "invalid", f"The parameter {name} must be given as {key}, not as {shown}.", diagnostics=name
            )
        if not _right_json_type(entry[key], key) or _has_control(entry[key]):
            raise FhirError("invalid", f"The {key} of parameter {name} is malformed.", diagnostics=name)
        found.append(entry[key])
    return found


def value_of(params: dict, name: str, key: str, *, required: bool = False) -> Any | None:
    """The one value of `name` (None when absent); 400 when repeated, of another type, or required and
    missing."""
    found = values_of(params, name, key)
    if len(found) > 1:
        raise FhirError("invalid", f"The parameter {name} may be given once only.", diagnostics=name)
    if not found:
        if required:
            raise FhirError("invalid", f"The parameter {name} is required.", diagnostics=name)
        return None
    return found[0]


def resource_of(
    params: dict, name: str, resource_type: str | None = None, *, required: bool = False
) -> dict | None:
    """The resource of parameter `name`; 400 when it is of another type than `resource_type`."""
    resource = value_of(params, name, RESOURCE, required=required)
    if resource is not None and resource_type:
        _check_resource_type(resource, name, resource_type)
    return resource


def _check_resource_type(resource: dict, name: str, resource_type: str) -> None:
    if resource.get("resourceType") != resource_type:
        raise FhirError(
            "invalid",
            f"The parameter {name} must hold a {resource_type}, not a {resource.get('resourceType')}.",
            diagnostics=name,
        )


# -- reading against a declaration ---------------------------------------------------------------------
class Inputs:
    """The checked input parameters of one call: declared name -> its values (type checked)."""

    def __init__(self, values: dict[str, list[Any]]) -> None:
        self._values = values

    def one(self, name: str) -> Any | None:
        values = self._values.get(name) or []
        return values[0] if values else None

    def all(self, name: str) -> list[Any]:
        return list(self._values.get(name) or [])

    def __contains__(self, name: str) -> bool:
        return bool(self._values.get(name))


def inputs_of(declared: Sequence[OperationParam]) -> list[OperationParam]:
    return [p for p in declared if p.use == "in"]


def read_parameters(resource: dict, declared: Sequence[OperationParam], operation: str) -> Inputs:
    """Check a Parameters body against the declared in-parameters: names, value types, cardinality."""
    wanted = inputs_of(declared)
    check_names(resource, [p.name for p in wanted], operation)
    values: dict[str, list[Any]] = {}
    for param in wanted:
        found = values_of(resource, param.name, _key(param))
        if _key(param) == RESOURCE and param.type != "Resource":
            for item in found:
                _check_resource_type(item, param.name, param.type or "Resource")
        if len(found) < param.min:
            raise FhirError("invalid", f"The parameter {param.name} is required.", diagnostics=param.name)
        if param.max != "*" and len(found) > int(param.max):
            raise FhirError(
                "invalid",
                f"The parameter {param.name} may be given {param.max} time(s) at most.",
                diagnostics=param.name,
            )
        values[param.name] = found
    return Inputs(values)


def _key(param: OperationParam) -> str:
    return "part" if param.part else value_key(param.type or "string")


def read_query(
    query: Sequence[tuple[str, str]], declared: Sequence[OperationParam], operation: str
) -> Inputs:
    """The same reader over URL parameters (GET): strings become the declared value[x]; a Reference is
    `Type/id`, an Identifier `system|value`. URL controls such as `_format` are left out."""
    wanted = {p.name: p for p in inputs_of(declared)}
    names = {name for name, _ in query if name in wanted or name not in URL_CONTROLS}
    _refuse_unknown(names, list(wanted), operation)
    parameter = [
        {"name": name, _key(wanted[name]): _from_text(wanted[name], text)}
        for name, text in query
        if name in wanted
    ]
    return read_parameters({"resourceType": "Parameters", "parameter": parameter}, declared, operation)


def _from_text(param: OperationParam, text: str) -> Any:
    fhir_type = param.type or "string"
    if fhir_type == "Reference":
        return {"reference": text}
    if fhir_type == "Identifier":
        system, bar, value = text.rpartition("|")
        return {"system": system, "value": value} if bar and system else {"value": value}
    if fhir_type == "boolean":
        if text not in ("true", "false"):
            raise FhirError("invalid", f"The parameter {param.name} must be true or false.")
        return text == "true"
    if fhir_type in ("integer", "positiveInt", "unsignedInt"):
        try:
            return int(text)
        except ValueError:
            raise FhirError("invalid", f"The parameter {param.name} must be a whole number.") from None
    if value_key(fhir_type) == RESOURCE or param.part or fhir_type[:1].isupper():
        raise FhirError(
            "invalid", f"The parameter {param.name} ({fhir_type}) cannot be given in the URL; use POST."
        )
    return text


# -- the writer ----------------------------------------------------------------------------------------
class ParametersBuilder:
    """Output Parameters, built in order: values, resources (dicts or stored JSON bytes) and parts."""

    def __init__(self) -> None:
        self.parameter: list[dict] = []

    def value(self, name: str, key: str, value: Any) -> ParametersBuilder:
        self.parameter.append({"name": name, key: value})
        return self

    def resource(self, name: str, resource: dict | bytes) -> ParametersBuilder:
        """A resource; stored bytes are embedded as they are (never re-parsed)."""
        embedded = orjson.Fragment(resource) if isinstance(resource, bytes) else resource
        self.parameter.append({"name": name, RESOURCE: embedded})
        return self

    def part(self, name: str, parts: ParametersBuilder) -> ParametersBuilder:
        self.parameter.append({"name": name, "part": parts.parameter})
        return self

    def build(self) -> dict:
        return {"resourceType": "Parameters", "parameter": list(self.parameter)}
