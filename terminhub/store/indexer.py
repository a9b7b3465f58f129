"""Index rows for a resource, computed once at write time from the search-parameter table."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

from terminhub.fhir import searchparams
from terminhub.fhir.dates import MAX_US, MIN_US, DateError, parse_range


def normalise_text(value: str) -> str:
    """Case- and accent-insensitive form used by string search (FHIR's default `starts with`)."""
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold().strip()


def walk(node: Any, path: str) -> Iterator[Any]:
    """Every value at a dotted path, stepping through lists."""
    if isinstance(node, list):
        for item in node:
            yield from walk(item, path)
        return
    if not path:
        if node is not None:
            yield node
        return
    if not isinstance(node, dict):
        return
    head, _, rest = path.partition(".")
    yield from walk(node.get(head), rest)


def split_reference(reference: str) -> tuple[str, str] | None:
    """`Type/id`, `Type/id/_history/n` or an absolute URL ending so: the target's type and id."""
    parts = reference.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2][:1].isupper():
        return parts[-2], parts[-1]
    return None


def _tokens(value: Any) -> Iterator[tuple[str | None, str]]:
    if isinstance(value, bool):
        yield None, "true" if value else "false"
    elif isinstance(value, str | int):
        yield None, str(value)
    elif isinstance(value, dict):
        if "coding" in value:
            for coding in value.get("coding") or []:
                if coding.get("code") is not None:
                    yield coding.get("system"), coding["code"]
        elif "code" in value:
            yield value.get("system"), value["code"]
        elif "value" in value:
            yield value.get("system"), str(value["value"])


def _range(value: Any, tz: ZoneInfo) -> tuple[int, int] | None:
    try:
        if isinstance(value, str):
            return parse_range(value, tz)
        if isinstance(value, dict) and ("start" in value or "end" in value):
            lo = parse_range(value["start"], tz)[0] if value.get("start") else MIN_US
            hi = parse_range(value["end"], tz)[1] if value.get("end") else MAX_US
            return lo, hi
    except DateError:
        return None
    return None


def index_rows(
    resource_type: str, resource_id: str, resource: dict, tz: ZoneInfo, only: frozenset[str] | None = None
) -> list[dict]:
    """All index rows of one resource (special parameters are answered at query time), or those of the
    parameters named in `only`."""
    rows: list[dict] = []
    for param in searchparams.PARAMS.get(resource_type, {}).values():
        if only is not None and param.name not in only:
            continue
        for path in param.paths:
            for value in walk(resource, path):
                rows.extend(_rows_for(param, value, tz))
    for row in rows:
        row["type"] = resource_type
        row["id"] = resource_id
    return _dedupe(rows)


def _rows_for(param: searchparams.SearchParam, value: Any, tz: ZoneInfo) -> Iterator[dict]:
    base = {
        "param": param.name,
        "system": None,
        "code": None,
        "text": None,
        "lo": None,
        "hi": None,
        "ref_type": None,
        "ref_id": None,
    }
    if param.kind in ("token", "special"):
        for system, code in _tokens(value):
            yield base | {"system": system, "code": code}
    elif param.kind == "reference" and isinstance(value, dict):
        target = split_reference(value["reference"]) if isinstance(value.get("reference"), str) else None
        if target and param.targets and target[0] not in param.targets:
            return
        identifier = value.get("identifier") or {}
        if target is None and not identifier:
            return
        if target is None and param.targets and value.get("type") not in (None, *param.targets):
            return
        yield base | {
            "ref_type": target[0] if target else None,
            "ref_id": target[1] if target else None,
            "system": identifier.get("system"),
            "code": identifier.get("value"),
        }
    elif param.kind == "date":
        span = _range(value, tz)
        if span:
            yield base | {"lo": span[0], "hi": span[1]}
    elif param.kind == "string" and isinstance(value, str):
        yield base | {"text": normalise_text(value), "code": value}  # code: as written, for `:exact`
    elif param.kind == "uri" and isinstance(value, str):
        yield base | {"text": value}


_VALUE_COLUMNS = ("param", "system", "code", "text", "lo", "hi", "ref_type", "ref_id")


def _dedupe(rows: list[dict]) -> list[dict]:
    """One row per distinct value; the rows of one resource differ only in these columns."""
    seen: set[tuple] = set()
    unique = []
    for row in rows:
        key = tuple(row[column] for column in _VALUE_COLUMNS)
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return unique


@cache  # few keys: the elements updates change
def params_on(resource_type: str, elements: frozenset[str]) -> frozenset[str]:
    """The parameters whose values come from these top-level elements of a resource."""
    return frozenset(
        param.name
        for param in searchparams.PARAMS.get(resource_type, {}).values()
        if any(path.split(".", 1)[0] in elements for path in param.paths)
    )


def position(resource_type: str, resource: dict) -> tuple[float, float] | None:
    """Latitude and longitude of a Location, for `near`."""
    if resource_type != "Location":
        return None
    pos = resource.get("position") or {}
    if isinstance(pos.get("latitude"), int | float) and isinstance(pos.get("longitude"), int | float):
        return float(pos["latitude"]), float(pos["longitude"])
    return None
