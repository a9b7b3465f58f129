"""Validation on write: R4 structure, required elements and value types (fhir.resources models)."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from terminhub.fhir.outcome import FhirError

_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_LOCAL_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")


@cache
def _model(resource_type: str) -> Any:
    return get_fhir_model_class(resource_type)


def valid_id(value: str) -> bool:
    return bool(_ID.match(value))


def validate(resource: dict, resource_type: str | None = None) -> None:
    """400 `invalid` with the first problems found; the resource itself is left as sent."""
    actual = resource.get("resourceType")
    if resource_type and actual != resource_type:
        raise FhirError("invalid", f"The body is a {actual}, expected {resource_type}.")
    try:
        model = _model(actual)
    except (KeyError, ValueError, AttributeError) as exc:
        raise FhirError("invalid", f"Unknown resource type {actual}.") from exc
    _check_times(resource, actual)
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise FhirError("invalid", f"The {actual} is not valid FHIR R4.", diagnostics=problems) from exc
    except (ValueError, TypeError) as exc:
        raise FhirError("invalid", f"The {actual} is not valid FHIR R4.", diagnostics=str(exc)[:500]) from exc


def _check_times(node: Any, path: str) -> None:
    """A dateTime with a time must carry an offset (2.4)."""
    if isinstance(node, dict):
        for key, value in node.items():
            _check_times(value, f"{path}.{key}")
    elif isinstance(node, list):
        for item in node:
            _check_times(item, path)
    elif isinstance(node, str) and _LOCAL_TIME.match(node):
        raise FhirError("invalid", f"{path}: a dateTime with a time must carry a UTC offset.")
