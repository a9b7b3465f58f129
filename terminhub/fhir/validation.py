"""Validation on write: R4 structure, required elements and value types (fhir.resources models).

The pydantic models are lenient where FHIR JSON is not: they would take `"active": "yes"` for true, `"2"`
for an integer, and codes outside their required value set. So the JSON types of primitives, the codes
of required bindings and the offsets of dateTimes (2.4) are checked first, walking the resource along
the structure metadata of `terminhub.fhir.structure`. Strings may not hold control characters (FHIR
forbids them; XML and PostgreSQL cannot carry NUL).

The model costs a Slot 120 µs, seven times the walk, while the Slots of a load, or the Appointments of
bookings, differ mostly in their primitive values. So the walk also checks each such value against the
model's own type of its element and puts in its place the first value of that element found valid: the
model judges each distinct shape once per process.
"""

from __future__ import annotations

import re
import types
import typing
from functools import cache
from typing import Any

import orjson
from fhir.resources.R4B import get_fhir_model_class
from pydantic import TypeAdapter, ValidationError

from terminhub.fhir import structure
from terminhub.fhir.outcome import FhirError
from terminhub.fhir.structure import BOOLEAN, COMPLEX, DECIMAL, INTEGER, RESOURCE, ElementDef

_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_LOCAL_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")
_WITH_TIME = frozenset({"dateTime", "instant"})
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")  # FHIR strings: no code points below 32 but tab, CR, LF
MAX_DEPTH = 64  # elements nested deeper are refused before anything recurses on them
_JSON_TYPE = {BOOLEAN: "true or false", INTEGER: "a whole number", DECIMAL: "a number"}


@cache
def _model(resource_type: str) -> Any:
    return get_fhir_model_class(resource_type)


def valid_id(value: str) -> bool:
    return bool(_ID.match(value))


def validate(resource: dict, resource_type: str | None = None) -> None:
    """400 `invalid` with the first problems found; the resource itself is left as sent."""
    actual = _checked_type(resource, resource_type)
    shape = _check_elements(resource, actual, actual, 0)
    _check_shape(resource, shape, actual)


SHAPES_KEPT = 4096  # distinct shapes the model passed, per process; forgotten all at once when full
_PASSED: dict[bytes, None] = {}


def _check_shape(resource: dict, shape: dict, actual: str) -> None:
    """The model's judgement of `resource`, given once per distinct shape. Where it refuses a shape, the
    resource itself is judged: the refusal then names its own values (and a shape never refuses what its
    resource would pass)."""
    try:
        key = orjson.dumps(shape)
    except orjson.JSONEncodeError:  # not plain JSON values: the model judges the resource itself
        _check_model(resource, actual)
        return
    if key in _PASSED:
        return
    try:
        _check_model(shape, actual)
    except FhirError:
        _check_model(resource, actual)
        return
    if len(_PASSED) >= SHAPES_KEPT:
        _PASSED.clear()
    _PASSED[key] = None


def validate_bundle_shell(shell: dict) -> None:
    """A batch or transaction Bundle whose entries' resources were taken out (they are validated entry by
    entry, as single requests are), as `validate` would judge it.

    The model judges each entry on its own and a uri's value never fails it, so it is shown each distinct
    entry once, with its fullUrl and request.url masked: a Bundle of 1,000 PUTs costs it one entry, not
    1,000 (a ninth of a Slot load's time). A refusal is then found again on the whole shell, so that it
    names the entry's own position."""
    _checked_type(shell, "Bundle")
    _check_elements(shell, "Bundle", "Bundle", 0)
    try:
        _check_model(_distinct_entries(shell), "Bundle")
    except FhirError:
        _check_model(shell, "Bundle")
        raise


_MASKED_URI = "urn:terminhub:masked"


def _distinct_entries(shell: dict) -> dict:
    entries = shell.get("entry")
    if not isinstance(entries, list):
        return shell
    distinct: dict[bytes, Any] = {}
    for entry in entries:
        masked = _masked(entry)
        try:
            key = orjson.dumps(masked, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:  # not plain JSON values: the model sees the whole shell
            return shell
        distinct.setdefault(key, masked)
    return {**shell, "entry": list(distinct.values())}


def _masked(entry: Any) -> Any:
    if not isinstance(entry, dict):
        return entry
    masked = dict(entry)
    if isinstance(masked.get("fullUrl"), str):
        masked["fullUrl"] = _MASKED_URI
    request = masked.get("request")
    if isinstance(request, dict) and isinstance(request.get("url"), str):
        masked["request"] = {**request, "url": _MASKED_URI}
    return masked


def _checked_type(resource: dict, resource_type: str | None) -> str:
    actual = resource.get("resourceType")
    if resource_type and actual != resource_type:
        raise FhirError("invalid", f"The body is a {actual}, expected {resource_type}.")
    if not isinstance(actual, str) or not structure.is_resource_type(actual):
        raise FhirError("invalid", f"Unknown resource type {actual}.")
    try:
        _model(actual)
    except (KeyError, ValueError, AttributeError) as exc:
        raise FhirError("invalid", f"Unknown resource type {actual}.") from exc
    return actual


def _check_model(resource: dict, actual: str) -> None:
    """The fhir.resources model's judgement: structure, cardinality, value formats."""
    try:
        _model(actual).model_validate(resource)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise FhirError("invalid", f"The {actual} is not valid FHIR R4.", diagnostics=problems) from exc
    except (ValueError, TypeError, RecursionError) as exc:
        raise FhirError("invalid", f"The {actual} is not valid FHIR R4.", diagnostics=str(exc)[:500]) from exc


def _check_elements(node: dict, type_name: str, path: str, depth: int) -> dict:
    """Primitives of their JSON type, codes of required bindings, dateTimes with an offset, not too deep;
    returns the node's shape (each primitive's `_stand_in`).

    Unknown elements and wrong shapes (a list for a single element, ...) are left to the model.
    """
    if depth > MAX_DEPTH:
        raise FhirError("invalid", f"{path}: the resource is nested too deeply.")
    tdef = structure.type_def(type_name)
    shape = {}
    for key, value in node.items():
        element = tdef.by_name.get(key)
        if element is None and key.startswith("_") and isinstance(tdef.json_keys.get(key), ElementDef):
            shape[key] = _check_items(value, "Element", f"{path}.{key}", depth)  # id, extensions
        elif element is None or value is None:
            shape[key] = value
        elif element.is_list and isinstance(value, list):
            shape[key] = [
                item if item is None else _check_value(item, element, f"{path}.{key}", type_name, depth)
                for item in value
            ]
        else:
            shape[key] = _check_value(value, element, f"{path}.{key}", type_name, depth)
    return shape


def _check_items(value: Any, type_name: str, path: str, depth: int) -> Any:
    if isinstance(value, list):
        return [_check_elements(i, type_name, path, depth + 1) if isinstance(i, dict) else i for i in value]
    return _check_elements(value, type_name, path, depth + 1) if isinstance(value, dict) else value


def _check_value(item: Any, element: ElementDef, path: str, owner: str, depth: int) -> Any:
    """Check one value of `element`; returns its shape."""
    kind = element.kind
    if kind == COMPLEX:
        return _check_elements(item, element.fhir_type, path, depth + 1) if isinstance(item, dict) else item
    if kind == RESOURCE:
        nested = item.get("resourceType") if isinstance(item, dict) else None
        if isinstance(nested, str) and structure.is_resource_type(nested):
            return _check_elements(item, nested, f"{path}({nested})", depth + 1)
        return item
    if kind == BOOLEAN:
        ok = isinstance(item, bool)
    elif kind == INTEGER:
        ok = isinstance(item, int) and not isinstance(item, bool)
    elif kind == DECIMAL:
        ok = isinstance(item, int | float) and not isinstance(item, bool)
    else:
        ok = isinstance(item, str)
    if not ok:
        expected = _JSON_TYPE.get(kind, "a string")
        raise FhirError(
            "invalid", f"{path} must be {expected} ({element.fhir_type}), not {_json_name(item)}."
        )
    if isinstance(item, str) and _CONTROL.search(item):
        raise FhirError("invalid", f"{path} holds a control character, which FHIR strings may not contain.")
    if element.fhir_type in _WITH_TIME and _LOCAL_TIME.match(item):
        raise FhirError("invalid", f"{path}: a dateTime with a time must carry a UTC offset.")
    allowed = _required_codes(owner).get(element.name)
    if allowed is not None and item not in allowed:
        raise FhirError(
            "invalid", f"{path}: {item!r} is not one of the allowed codes ({', '.join(sorted(allowed))})."
        )
    return _stand_in(item, element, owner)


_KEPT_TYPES = frozenset({"boolean", "code"})  # few distinct values: a shape keeps them as sent


def _stand_in(item: Any, element: ElementDef, owner: str) -> Any:
    """What stands for a primitive value in the shape: the first value of this element that its model type
    passed, where this one passes too; else the value itself, for the model to judge."""
    if element.fhir_type in _KEPT_TYPES:
        return item
    checker = _primitive_checker(owner, element.name)
    if checker is None:
        return item
    adapter, first = checker
    try:
        adapter.validate_python(item)
    except (ValidationError, ValueError, TypeError):
        return item
    return first.setdefault("value", item)


@cache
def _primitive_checker(owner: str, name: str) -> tuple[TypeAdapter, dict] | None:
    """The model's own type of one primitive element (without its list or None), and a place for the first
    value it passed; None where the model's field adds constraints of its own or is not found."""
    try:
        fields = _model(owner).model_fields
    except (KeyError, ValueError, AttributeError):
        return None
    field = next((f for key, f in fields.items() if (f.alias or key) == name), None)
    if field is None or field.metadata:
        return None
    annotation = field.annotation
    while typing.get_origin(annotation) in (typing.Union, types.UnionType, list):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return TypeAdapter(annotation), {}


@cache
def _required_codes(type_name: str) -> dict[str, frozenset[str]]:
    """Element name -> the codes of its required binding, as the models list them."""
    fields = _model(type_name).model_fields
    codes = {}
    for key, field in fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("enum_values"):
            codes[field.alias or key] = frozenset(extra["enum_values"])
    return codes


def _json_name(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a decimal number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null"
