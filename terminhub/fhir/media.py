"""Media types: choosing the response format, reading request bodies, rendering resources."""

from __future__ import annotations

import orjson

from terminhub.fhir.outcome import FhirError

JSON_TYPES = frozenset({"application/fhir+json", "application/json", "application/json+fhir"})
XML_TYPES = frozenset({"application/fhir+xml", "application/xml", "text/xml", "application/xml+fhir"})
FORM_TYPE = "application/x-www-form-urlencoded"
MEDIA = {"json": "application/fhir+json; charset=utf-8", "xml": "application/fhir+xml; charset=utf-8"}
MAX_BODY = 50 * 1024 * 1024
MAX_ENTRIES = 10_000


def _bare(media_type: str) -> str:
    return media_type.split(";", 1)[0].strip().lower()


def format_of(media_type: str) -> str | None:
    bare = _bare(media_type)
    if bare in JSON_TYPES or bare == "json":
        return "json"
    if bare in XML_TYPES or bare == "xml":
        return "xml"
    return None


def response_format(format_param: str | None, accept: str | None) -> str:
    """`_format` wins over Accept; no Accept, */* and application/* mean JSON; otherwise 406."""
    if format_param:
        chosen = format_of(format_param.replace(" ", "+"))
        if chosen is None:
            raise FhirError("not-acceptable", f"_format={format_param} is not a supported format.")
        return chosen
    if not accept or not accept.strip():
        return "json"
    ranked = []
    for position, item in enumerate(accept.split(",")):
        media, _, params = item.partition(";")
        quality = 1.0
        for p in params.split(";"):
            key, _, val = p.strip().partition("=")
            if key == "q":
                try:
                    quality = float(val)
                except ValueError:
                    quality = 0.0
        ranked.append((-quality, position, media.strip().lower()))
    for quality, _, media in sorted(ranked):
        if quality == 0:
            continue
        if media in ("*/*", "application/*", ""):
            return "json"
        if media == "text/*":
            return "xml"
        chosen = format_of(media)
        if chosen:
            return chosen
    raise FhirError("not-acceptable", "The Accept header names no supported format (FHIR JSON or XML).")


def parse_resource(body: bytes, content_type: str | None) -> dict:
    """A request body as a resource dict: 415 for other media types, 400 for broken content."""
    if len(body) > MAX_BODY:
        raise FhirError("too-large", "The request body is larger than 50 MB.")
    fmt = format_of(content_type or "application/fhir+json")
    if fmt is None:
        text = f"A body of type {_bare(content_type or '')} is not supported; send FHIR JSON or XML."
        raise FhirError("unsupported-media-type", text)
    if not body.strip():
        raise FhirError("invalid", "The request body is empty.")
    if fmt == "json":
        try:
            data = orjson.loads(body.removeprefix(b"\xef\xbb\xbf"))  # a UTF-8 byte order mark may be ignored
        except orjson.JSONDecodeError as exc:
            raise FhirError("invalid", "The body is not valid JSON.", diagnostics=str(exc)) from exc
    else:
        from terminhub.fhir.xml import XmlInputError, parse_resource_xml

        try:
            data = parse_resource_xml(body)
        except XmlInputError as exc:
            raise FhirError("invalid", "The body is not acceptable FHIR XML.", diagnostics=str(exc)) from exc
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise FhirError("invalid", "The body is not a FHIR resource (resourceType is missing).")
    if data.get("resourceType") == "Bundle" and len(data.get("entry") or []) > MAX_ENTRIES:
        raise FhirError("too-large", "A Bundle may hold at most 10,000 entries.")
    return data


def render(resource: dict | bytes, fmt: str) -> bytes:
    """Stored JSON bytes pass through untouched; XML is produced only when asked for."""
    if fmt == "json":
        return resource if isinstance(resource, bytes) else orjson.dumps(resource)
    from terminhub.fhir.xml import resource_to_xml

    return resource_to_xml(orjson.loads(resource) if isinstance(resource, bytes) else resource)
