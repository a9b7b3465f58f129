"""Search requests as data: parameters parsed and checked against the parameter table."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field

import orjson

from terminhub.fhir import searchparams
from terminhub.fhir.outcome import FhirError

DEFAULT_COUNT = 50
MAX_COUNT = 1000
MAX_PAGE = 10**12  # beyond any data; keeps (page - 1) * _count inside the databases' 64-bit OFFSET
MODIFIERS = {"missing", "not", "exact", "contains", "identifier", "text", "below", "above", "iterate"}


@dataclass(frozen=True)
class Criterion:
    """One search parameter occurrence: its values are OR'd; criteria are AND'd."""

    name: str
    modifier: str | None
    values: tuple[str, ...]
    param: searchparams.SearchParam | None = None


@dataclass
class SearchRequest:
    resource_type: str
    criteria: list[Criterion] = field(default_factory=list)
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (name, descending)
    count: int = DEFAULT_COUNT
    page: int | None = None
    cursor: dict | None = None
    total: bool = False
    # (type, param, target, iterate)
    includes: list[tuple[str, str, str | None, bool]] = field(default_factory=list)
    revincludes: list[tuple[str, str, str | None, bool]] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    echo: list[tuple[str, str]] = field(default_factory=list)  # parameters used, for links
    # HealthcareService and Schedule searches without `active` return only active-or-absent ones (contract 2)
    default_active: bool = True


def parse_search(resource_type: str, params: list[tuple[str, str]], *, strict: bool) -> SearchRequest:
    """Turn query/body parameters into a SearchRequest; unknown ones are reported or refused."""
    request = SearchRequest(resource_type)
    for raw_name, value in params:
        name, _, modifier = raw_name.partition(":")
        if raw_name in ("_format", "_pretty"):  # honoured by the endpoint; links repeat them
            request.echo.append((raw_name, value))
            continue
        if raw_name in ("_summary", "_elements"):
            continue
        if name == "_cursor":
            request.cursor = decode_cursor(value)
            continue
        request.echo.append((raw_name, value))
        if name == "_count":
            request.count = min(_non_negative_int(raw_name, value), MAX_COUNT)
        elif name == "page":
            request.page = min(_non_negative_int(raw_name, value), MAX_PAGE) or 1
        elif name == "_total":
            request.total = value == "accurate"
        elif name == "_sort":
            request.sort = _parse_sort(resource_type, value)
        elif name in ("_include", "_revinclude"):
            _parse_include(request, name, modifier, value)
        elif name in searchparams.COMMON or searchparams.param(resource_type, name):
            if modifier and modifier not in MODIFIERS and not modifier[:1].isupper():
                raise FhirError("invalid", f"Unknown modifier :{modifier} on search parameter {name}.")
            values = tuple(v for v in _split_or(value))
            param = searchparams.param(resource_type, name)
            if param is not None and param.pattern:
                _check_format(param, modifier, values)
            request.criteria.append(Criterion(name, modifier or None, values, param))
        else:
            if strict:
                raise FhirError("invalid", f"Unknown search parameter {raw_name} for {resource_type}.")
            request.echo.pop()
            request.unknown.append(raw_name)
    if resource_type == "Provenance":
        _as_change_feed(request)
    return request


def _as_change_feed(request: SearchRequest) -> None:
    """Provenance searches are the change feed (contract 5): oldest first, each with the current version
    of the resource it changed."""
    if not request.sort:
        request.sort = [("recorded", False)]
    if not any(include[:2] == ("Provenance", "target") for include in request.includes):
        request.includes.insert(0, ("Provenance", "target", None, False))


def _check_format(param: searchparams.SearchParam, modifier: str, values: tuple[str, ...]) -> None:
    """Parameters with a fixed value format (BSNR, LANR) take exactly such values and no modifier."""
    if modifier:
        raise FhirError("invalid", f"The search parameter {param.name} takes no modifier.")
    for value in values:
        if not re.fullmatch(param.pattern, value):
            wanted = param.extra.get("format", f"of the form {param.pattern}")
            raise FhirError(
                "invalid", f"{param.name} must be {wanted}.", diagnostics=f"{param.name}={value[:40]}"
            )


def _non_negative_int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise FhirError("invalid", f"{name} must be a whole number.") from exc
    if number < 0:
        raise FhirError("invalid", f"{name} must not be negative.")
    return number


def _split_or(value: str) -> list[str]:
    """Split a parameter value at unescaped commas (`\\,` stays a comma)."""
    parts, current, escaped = [], [], False
    for ch in value:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _parse_sort(resource_type: str, value: str) -> list[tuple[str, bool]]:
    allowed = set(searchparams.sortable(resource_type)) | {"_lastUpdated", "_id"}
    result = []
    for item in value.split(","):
        item = item.strip()
        descending = item.startswith("-")
        name = item.lstrip("-")
        if name not in allowed:
            raise FhirError(
                "invalid", f"Cannot sort {resource_type} by {name}; sortable: {', '.join(sorted(allowed))}."
            )
        result.append((name, descending))
    return result


def _parse_include(request: SearchRequest, name: str, modifier: str, value: str) -> None:
    iterate = modifier == "iterate"
    if modifier and not iterate:
        raise FhirError("invalid", f"Unknown modifier {name}:{modifier}.")
    parts = value.split(":")
    if len(parts) not in (2, 3):
        raise FhirError("invalid", f"{name} must be Type:parameter[:targetType].")
    source, param_name = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if name == "_include":
        if param_name not in searchparams.INCLUDES.get(source, ()):
            raise FhirError("invalid", f"_include={value} is not supported.")
        if not iterate and source != request.resource_type:
            raise FhirError("invalid", f"_include={value} does not start at {request.resource_type}.")
        request.includes.append((source, param_name, target, iterate))
    else:
        if (source, param_name) not in searchparams.REVINCLUDES:
            raise FhirError("invalid", f"_revinclude={value} is not supported.")
        request.revincludes.append((source, param_name, target, iterate))


def encode_cursor(data: dict) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).decode().rstrip("=")


def decode_cursor(value: str) -> dict:
    try:
        data = orjson.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise FhirError("invalid", "The paging cursor is not valid.") from exc
    if not isinstance(data, dict) or "k" not in data or not isinstance(data["k"], list):
        raise FhirError("invalid", "The paging cursor is not valid.")
    return data
