"""The FHIR XML wire format: lossless conversion between FHIR JSON dicts and FHIR XML.

Resources are stored and handled as FHIR JSON; XML exists only at the edge, because the German
116117 clients speak nothing else. Both directions are driven by ``structure`` (the element order
and kinds of every type), following https://hl7.org/fhir/R4/xml.html and json.html:

- primitives carry their value in a ``value`` attribute; their ``id`` attribute and ``extension``
  children go to the ``_name`` JSON property (a parallel list with nulls for repeating elements);
- ``Element.id`` and ``Extension.url`` are attributes;
- ``Narrative.div`` is an XHTML element in XML and its serialization as a string in JSON;
- a nested resource (``contained``, ``Bundle.entry.resource``, ...) is wrapped in an element
  named after its type.

Parsing is hardened because the XML comes from the network: no DTD, no entity, no processing
instruction is accepted, and nothing is ever fetched while parsing.
"""

from __future__ import annotations

import functools
import math
import re
import threading
from decimal import Decimal
from typing import Any, Final

from lxml import etree

from terminhub.fhir import structure
from terminhub.fhir.structure import BOOLEAN, DECIMAL, INTEGER, RESOURCE, XHTML, ElementDef, TypeDef

__all__ = ["FHIR_NS", "XHTML_NS", "XmlInputError", "parse_resource_xml", "resource_to_xml"]

FHIR_NS: Final = "http://hl7.org/fhir"
XHTML_NS: Final = "http://www.w3.org/1999/xhtml"
_XML_NS: Final = "http://www.w3.org/XML/1998/namespace"
_XSI_NS: Final = "http://www.w3.org/2001/XMLSchema-instance"
_FHIR_PREFIX: Final = "{" + FHIR_NS + "}"
_XHTML_PREFIX: Final = "{" + XHTML_NS + "}"
_XSI_PREFIX: Final = "{" + _XSI_NS + "}"
_XML_DECLARATION: Final = '<?xml version="1.0" encoding="UTF-8"?>'
_XML_WHITESPACE: Final = " \t\r\n"
_NO_DOCTYPE: Final = "DOCTYPE and entity declarations are not allowed"

_INTEGER_RE: Final = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_DECIMAL_RE: Final = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_PLAIN_INT_RE: Final = re.compile(r"-?[0-9]+")
_INTEGER_MINIMUM: Final = {"integer": -(2**31), "unsignedInt": 0, "positiveInt": 1}
_INTEGER_MAXIMUM: Final = 2**31 - 1

_INVALID_XML_CHAR_RE: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_ATTRIBUTE_ESCAPE_RE: Final = re.compile('[&<>"\n\r\t]')
_TEXT_ESCAPE_RE: Final = re.compile('[&<>"\r]')
_ESCAPES: Final = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    '"': "&quot;",
    "\n": "&#10;",
    "\r": "&#13;",
    "\t": "&#9;",
}


class XmlInputError(ValueError):
    """An XML body that is not acceptable FHIR XML; the message is meant for the client."""


# ---------------------------------------------------------------------------------------------
# XML -> JSON
# ---------------------------------------------------------------------------------------------


def parse_resource_xml(data: bytes) -> dict[str, Any]:
    """Parse a FHIR XML resource into its FHIR JSON form (a dict as ``json.loads`` gives it).

    Raises XmlInputError for anything that is not safe, well-formed FHIR XML of a known
    resource type: a DTD, entity or processing instruction, an unknown or misplaced element,
    a bad primitive value.
    """
    root = _parse_untrusted(data.encode("utf-8") if isinstance(data, str) else bytes(data))
    try:
        return _read_resource(root, "")
    except RecursionError:
        raise XmlInputError("XML is nested too deeply") from None


_parsers = threading.local()


def _parser() -> etree.XMLParser:
    """A hardened parser per thread (lxml parsers must not be shared between threads)."""
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,
            remove_comments=False,
            remove_pis=False,
            strip_cdata=True,
        )  # not collect_ids=False: with it, libxml2 reads a DOCTYPE's external subset from disk
        parser.resolvers.add(_RefuseExternal())
        _parsers.parser = parser
    return parser


class _RefuseExternal(etree.Resolver):
    """Second line of defence: should libxml2 ever ask for an external DTD or entity, refuse."""

    def resolve(self, system_url: str | None, public_id: str | None, context: Any) -> Any:
        """Refuse every URL, local files included."""
        raise XmlInputError("external DTDs and entities are not allowed")


def _parse_untrusted(data: bytes) -> etree._Element:
    """Parse bytes from the network into an element tree, refusing anything but plain XML."""
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        if b"<!DOCTYPE" in data:
            raise XmlInputError(_NO_DOCTYPE) from None
        raise XmlInputError(f"malformed XML: {exc}") from None
    if root is None:
        raise XmlInputError("malformed XML: no root element")
    _reject_unsafe_nodes(root)
    return root


def _reject_unsafe_nodes(root: etree._Element) -> None:
    """Refuse DOCTYPE (and with it every entity declaration), entities and processing instructions."""
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise XmlInputError(_NO_DOCTYPE)
    siblings = [*root.itersiblings(preceding=True), *root.itersiblings()]
    if any(isinstance(node, etree._ProcessingInstruction) for node in siblings):
        raise XmlInputError("processing instructions are not allowed")
    for node in root.iter(etree.PI, etree.Entity):
        kind = "processing instructions" if isinstance(node, etree._ProcessingInstruction) else "entities"
        raise XmlInputError(f"{kind} are not allowed")


def _read_resource(node: etree._Element, path: str) -> dict[str, Any]:
    """Read a resource element (root or wrapped) into a JSON dict with ``resourceType`` first."""
    name = _fhir_local_name(node, path)
    if not structure.is_resource_type(name):
        raise XmlInputError(f"{_at(path)}<{name}> is not a known FHIR resource type")
    path = f"{path}.{name}" if path else name
    _check_attributes(node, (), path)
    result: dict[str, Any] = {"resourceType": name}
    _read_children(node, structure.type_def(name), result, path)
    return result


def _fhir_local_name(node: etree._Element, path: str) -> str:
    """The local name of an element that must be in the FHIR namespace."""
    qname = etree.QName(node)
    if qname.namespace != FHIR_NS:
        namespace = f"namespace {qname.namespace}" if qname.namespace else "no namespace"
        raise XmlInputError(f"{_at(path)}<{qname.localname}> is in {namespace}, expected {FHIR_NS}")
    return qname.localname


def _read_children(node: etree._Element, tdef: TypeDef, out: dict[str, Any], path: str) -> None:
    """Read the child elements of ``node`` (of type ``tdef``) into ``out``, checking their order."""
    _check_no_text(node.text, path)
    tags = _child_tags(tdef.name)
    last_index = -1
    choices: dict[str, str] = {}
    primitive_lists: list[ElementDef] = []
    for child in node:
        _check_no_text(child.tail, path)
        if not isinstance(child.tag, str):
            continue  # a comment: PIs and entities were refused before
        element = tags.get(child.tag)
        if element is None:
            raise XmlInputError(f"{_at(path)}unexpected element {_describe(child)}")
        _check_position(element, last_index, choices, path)
        last_index = element.index
        child_path = f"{path}.{element.name}"
        if element.is_primitive:
            value, extension = _read_primitive(child, element, child_path)
            _store_primitive(out, element, value, extension, primitive_lists)
        else:
            value = _read_non_primitive(child, element, child_path)
            if element.is_list:
                out.setdefault(element.name, []).append(value)
            else:
                out[element.name] = value
    for element in primitive_lists:
        _drop_if_all_null(out, element.name)
        _drop_if_all_null(out, "_" + element.name)


@functools.cache
def _child_tags(type_name: str) -> dict[str, ElementDef]:
    """Qualified XML tag -> element, for the child elements (not attributes) of a type."""
    tags = {}
    for element in structure.type_def(type_name).elements:
        if element.kind == XHTML:
            tags[_XHTML_PREFIX + element.name] = element
        elif not element.is_attribute:
            tags[_FHIR_PREFIX + element.name] = element
    return tags


def _describe(node: etree._Element) -> str:
    """An element's name for a message, with its namespace when that is not FHIR's."""
    qname = etree.QName(node)
    if qname.namespace in (FHIR_NS, None):
        return f"<{qname.localname}>"
    return f"<{qname.localname}> in namespace {qname.namespace}"


def _check_position(element: ElementDef, last_index: int, choices: dict[str, str], path: str) -> None:
    """Refuse an element out of definition order, a repeated single element, two choice types."""
    if element.index < last_index:
        raise XmlInputError(f"{_at(path)}element <{element.name}> is out of order")
    if element.index == last_index and not element.is_list:
        raise XmlInputError(f"{_at(path)}element <{element.name}> may occur only once")
    if element.choice is not None:
        chosen = choices.setdefault(element.choice, element.name)
        if chosen != element.name:
            raise XmlInputError(f"{_at(path)}<{chosen}> and <{element.name}> exclude each other")


def _read_non_primitive(node: etree._Element, element: ElementDef, path: str) -> Any:
    """Read a complex element, a wrapped resource or the narrative div."""
    if element.kind == XHTML:
        return _xhtml_to_string(node, XmlInputError)
    if element.kind == RESOURCE:
        return _read_wrapped_resource(node, path)
    tdef = structure.type_def(element.fhir_type)
    result: dict[str, Any] = _check_attributes(node, _attribute_names(tdef.name), path)
    _read_children(node, tdef, result, path)
    if not result:
        raise XmlInputError(f"{_at(path)}element <{element.name}> is empty")
    return result


@functools.cache
def _attribute_names(type_name: str) -> tuple[str, ...]:
    """The XML attributes a complex element of this type may carry."""
    return tuple(element.name for element in structure.type_def(type_name).attributes)


def _read_wrapped_resource(node: etree._Element, path: str) -> dict[str, Any]:
    """Read ``<contained><Patient>...</Patient></contained>``: exactly one resource inside."""
    _check_attributes(node, (), path)
    _check_no_text(node.text, path)
    inner = []
    for child in node:
        _check_no_text(child.tail, path)
        if isinstance(child.tag, str):
            inner.append(child)
    if len(inner) != 1:
        raise XmlInputError(f"{_at(path)}expected exactly one resource, found {len(inner)} elements")
    return _read_resource(inner[0], path)


def _read_primitive(node: etree._Element, element: ElementDef, path: str) -> tuple[Any, dict | None]:
    """Read a primitive element: its JSON value and its ``_name`` object (id, extensions)."""
    attributes = _check_attributes(node, ("id", "value"), path)
    raw = attributes.pop("value", None)
    extension: dict[str, Any] = attributes
    _read_children(node, _primitive_extension_def(), extension, path)
    if raw is None and not extension:
        raise XmlInputError(f"{_at(path)}element <{element.name}> has neither a value nor extensions")
    value = None if raw is None else _parse_value(raw, element, path)
    return value, (extension or None)


@functools.cache
def _primitive_extension_def() -> TypeDef:
    """The structure of a primitive's ``_name`` object: ``id`` (attribute) and ``extension``."""
    return structure.type_def(structure.PRIMITIVE_EXTENSION_TYPE)


def _store_primitive(
    out: dict[str, Any], element: ElementDef, value: Any, extension: dict | None, lists: list[ElementDef]
) -> None:
    """Put a primitive into ``out``: ``name`` and ``_name``, as parallel lists if it repeats."""
    name = element.name
    if not element.is_list:
        if value is not None:
            out[name] = value
        if extension is not None:
            out["_" + name] = extension
        return
    if name not in out:
        out[name] = []
        out["_" + name] = []
        lists.append(element)
    out[name].append(value)
    out["_" + name].append(extension)


def _drop_if_all_null(out: dict[str, Any], key: str) -> None:
    """A parallel list without a single entry is left out of the JSON altogether."""
    if all(item is None for item in out[key]):
        del out[key]


def _parse_value(raw: str, element: ElementDef, path: str) -> Any:
    """Convert a ``value`` attribute to its JSON value, refusing values of the wrong form."""
    if raw == "":
        raise XmlInputError(f"{_at(path)}the value attribute must not be empty")
    kind = element.kind
    if kind == BOOLEAN:
        if raw not in ("true", "false"):
            raise XmlInputError(f"{_at(path)}{_quote(raw)} is not a boolean (true or false)")
        return raw == "true"
    if kind == INTEGER:
        return _parse_integer(raw, element.fhir_type, path)
    if kind == DECIMAL:
        return _parse_decimal(raw, path)
    return raw


def _parse_integer(raw: str, fhir_type: str, path: str) -> int:
    """An integer, positiveInt or unsignedInt within its range."""
    if not _INTEGER_RE.fullmatch(raw):
        raise XmlInputError(f"{_at(path)}{_quote(raw)} is not a valid {fhir_type}")
    value = int(raw)
    if not _INTEGER_MINIMUM[fhir_type] <= value <= _INTEGER_MAXIMUM:
        raise XmlInputError(f"{_at(path)}{_quote(raw)} is out of range for {fhir_type}")
    return value


def _parse_decimal(raw: str, path: str) -> int | float:
    """A decimal as JSON has it: int without fraction or exponent, float otherwise."""
    if not _DECIMAL_RE.fullmatch(raw):
        raise XmlInputError(f"{_at(path)}{_quote(raw)} is not a valid decimal")
    if _PLAIN_INT_RE.fullmatch(raw):
        return int(raw)
    value = float(raw)
    if not math.isfinite(value):
        raise XmlInputError(f"{_at(path)}{_quote(raw)} is out of range for decimal")
    return value


def _check_attributes(node: etree._Element, allowed: tuple[str, ...], path: str) -> dict[str, str]:
    """Return the allowed attributes of a FHIR element; refuse others (xsi:* is ignored)."""
    found: dict[str, str] = {}
    for key, value in node.attrib.items():
        if key in allowed:
            found[key] = value
        elif not key.startswith(_XSI_PREFIX):
            raise XmlInputError(f"{_at(path)}unexpected attribute {etree.QName(key).localname!r}")
    return found


def _check_no_text(text: str | None, path: str) -> None:
    """FHIR elements hold no text of their own (values live in attributes)."""
    if text and text.strip(_XML_WHITESPACE):
        raise XmlInputError(f"{_at(path)}unexpected text {_quote(text.strip())}")


def _quote(text: str) -> str:
    """Client text quoted for a message, cut short: a message must not echo megabytes."""
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _at(path: str) -> str:
    """Prefix for messages that tells the client where the problem is."""
    return f"{path}: " if path else ""


# ---------------------------------------------------------------------------------------------
# Narrative XHTML, the same canonical string in both directions
# ---------------------------------------------------------------------------------------------


def _xhtml_to_string(div: etree._Element, error: type[ValueError]) -> str:
    """Serialize a narrative div as FHIR JSON has it: ``<div xmlns="http://www.w3.org/1999/xhtml">``.

    Serialized by hand rather than by lxml so that namespace declarations of the enclosing
    FHIR document do not leak in, prefixes are normalized, and quotes in text are written as
    ``&quot;`` like the FHIR publisher's JSON does.
    """
    parts: list[str] = []
    _write_xhtml_element(parts, div, error, root=True)
    return "".join(parts)


def _write_xhtml_element(parts: list[str], node: etree._Element, error: type[ValueError], root: bool) -> None:
    """Write one XHTML element with its content; only XHTML elements are allowed in a narrative."""
    qname = etree.QName(node)
    if qname.namespace != XHTML_NS:
        raise error(f"narrative: element <{qname.localname}> is not in the XHTML namespace")
    parts.append("<" + qname.localname)
    if root:
        parts.append(f' xmlns="{XHTML_NS}"')
    for key, value in node.attrib.items():
        parts.append(f' {_xhtml_attribute_name(key, error)}="{_escape_attribute(value)}"')
    if node.text is None and len(node) == 0:
        parts.append("/>")
        return
    parts.append(">")
    if node.text:
        parts.append(_escape_text(node.text))
    for child in node:
        if isinstance(child, etree._Comment):
            parts.append(f"<!--{child.text or ''}-->")
        elif isinstance(child.tag, str):
            _write_xhtml_element(parts, child, error, root=False)
        else:
            raise error("narrative: processing instructions and entities are not allowed")
        if child.tail:
            parts.append(_escape_text(child.tail))
    parts.append(f"</{qname.localname}>")


def _xhtml_attribute_name(key: str, error: type[ValueError]) -> str:
    """Attribute name as written in XHTML: plain, or ``xml:lang`` style; other namespaces refused."""
    if not key.startswith("{"):
        return key
    qname = etree.QName(key)
    if qname.namespace == _XML_NS:
        return "xml:" + qname.localname
    raise error(f"narrative: attribute {qname.localname!r} in namespace {qname.namespace} is not allowed")


@functools.lru_cache(maxsize=1024)
def _canonical_div(div: str) -> str:
    """Check a JSON narrative div and return it in canonical form (cached: narratives repeat)."""
    try:
        root = _parse_untrusted(div.encode("utf-8"))
    except (XmlInputError, UnicodeEncodeError) as exc:  # a rendering bug, not the client's input
        raise ValueError(f"narrative div is not acceptable XHTML: {exc}") from None
    if root.tag != _XHTML_PREFIX + "div":
        raise ValueError("narrative div must be a <div> in the XHTML namespace")
    return _xhtml_to_string(root, ValueError)


# ---------------------------------------------------------------------------------------------
# JSON -> XML
# ---------------------------------------------------------------------------------------------


def resource_to_xml(resource: dict[str, Any]) -> bytes:
    """Render a FHIR JSON resource as FHIR XML (UTF-8, with XML declaration).

    Elements come out in FHIR definition order whatever the JSON key order. Raises ValueError
    for a property that the resource type does not define or a value of the wrong JSON type:
    the server renders only resources it validated, so this signals a bug, not bad input.
    """
    parts = [_XML_DECLARATION]
    try:
        _write_resource(parts, resource, "", root=True)
    except RecursionError:
        raise ValueError("resource is nested too deeply") from None
    return "".join(parts).encode("utf-8")


def _write_resource(parts: list[str], resource: Any, path: str, root: bool = False) -> None:
    """Write a resource element named after its type; the root declares the FHIR namespace."""
    if not isinstance(resource, dict):
        raise ValueError(f"{_at(path)}expected a resource object")
    name = resource.get("resourceType")
    if not isinstance(name, str) or not structure.is_resource_type(name):
        raise ValueError(f"{_at(path)}unknown resourceType {name!r}")
    path = f"{path}.{name}" if path else name
    parts.append(f'<{name} xmlns="{FHIR_NS}">' if root else f"<{name}>")
    _write_children(parts, resource, structure.type_def(name), path)
    parts.append(f"</{name}>")


def _write_children(parts: list[str], obj: dict[str, Any], tdef: TypeDef, path: str) -> None:
    """Write the child elements of a JSON object in definition order (attributes excluded)."""
    for element in _present_elements(obj, tdef, path):
        child_path = f"{path}.{element.name}"
        if element.is_primitive:
            _write_primitive_element(parts, element, obj, child_path)
        elif element.is_list:
            items = obj[element.name]
            if not isinstance(items, list):
                raise ValueError(f"{child_path}: expected an array")
            for item in items:
                _write_non_primitive(parts, element, item, child_path)
        else:
            _write_non_primitive(parts, element, obj[element.name], child_path)


def _present_elements(obj: dict[str, Any], tdef: TypeDef, path: str) -> list[ElementDef]:
    """The elements present in a JSON object, sorted by definition order; unknown keys refused."""
    present: dict[int, ElementDef] = {}
    keys = tdef.json_keys
    for key in obj:
        element = keys.get(key)
        if element is None:
            if key == "resourceType" and tdef.is_resource:
                continue
            raise ValueError(f"{_at(path)}unknown property {key!r} for {tdef.name}")
        if not element.is_attribute:
            present[element.index] = element
    return [present[index] for index in sorted(present)]


def _write_non_primitive(parts: list[str], element: ElementDef, value: Any, path: str) -> None:
    """Write a complex element, a wrapped resource or the narrative div."""
    name = element.name
    if element.kind == XHTML:
        if not isinstance(value, str):
            raise ValueError(f"{path}: narrative div must be a string")
        parts.append(_canonical_div(value))
    elif element.kind == RESOURCE:
        parts.append(f"<{name}>")
        _write_resource(parts, value, path)
        parts.append(f"</{name}>")
    else:
        _write_complex(parts, name, value, structure.type_def(element.fhir_type), path)


def _write_complex(parts: list[str], name: str, obj: Any, tdef: TypeDef, path: str) -> None:
    """Write a datatype or backbone element: attributes (id, url), then children."""
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected an object")
    start = f"<{name}{_attributes(obj, tdef, path)}"
    parts.append(start + ">")
    count = len(parts)
    _write_children(parts, obj, tdef, path)
    if len(parts) == count:
        parts[-1] = start + "/>"
    else:
        parts.append(f"</{name}>")


def _attributes(obj: dict[str, Any], tdef: TypeDef, path: str) -> str:
    """The XML attributes of a complex element: ``Element.id`` and ``Extension.url``."""
    text = ""
    for element in tdef.attributes:
        if element.name in obj:
            value = obj[element.name]
            if not isinstance(value, str):
                raise ValueError(f"{path}.{element.name}: expected a string")
            text += f' {element.name}="{_escape_attribute(value)}"'
    return text


def _write_primitive_element(parts: list[str], element: ElementDef, obj: dict[str, Any], path: str) -> None:
    """Write a primitive from its ``name`` and ``_name`` properties, pairing list items."""
    value = obj.get(element.name)
    extension = obj.get("_" + element.name)
    if not element.is_list:
        _write_primitive(parts, element, value, extension, path)
        return
    values = [] if value is None else value
    extensions = [] if extension is None else extension
    if not isinstance(values, list) or not isinstance(extensions, list):
        raise ValueError(f"{path}: expected an array")
    if value is not None and extension is not None and len(values) != len(extensions):
        raise ValueError(f"{path}: {element.name} and _{element.name} differ in length")
    for index in range(max(len(values), len(extensions))):
        item = values[index] if values else None
        item_extension = extensions[index] if extensions else None
        _write_primitive(parts, element, item, item_extension, f"{path}[{index}]")


def _write_primitive(parts: list[str], element: ElementDef, value: Any, extension: Any, path: str) -> None:
    """Write one primitive element: ``<name id=".." value="..">extensions</name>``."""
    if value is None and extension is None:
        raise ValueError(f"{path}: neither a value nor extensions")
    start = "<" + element.name
    if extension is not None:
        if not isinstance(extension, dict):
            raise ValueError(f"{path}: _{element.name} must be an object")
        start += _attributes(extension, _primitive_extension_def(), path)
    if value is not None:
        start += f' value="{_escape_attribute(_format_value(value, element, path))}"'
    count = len(parts)
    parts.append(start + ">")
    if extension is not None:
        _write_children(parts, extension, _primitive_extension_def(), path)
    if len(parts) == count + 1:
        parts[-1] = start + "/>"
    else:
        parts.append(f"</{element.name}>")


def _format_value(value: Any, element: ElementDef, path: str) -> str:
    """The ``value`` attribute of a primitive, checking the JSON type matches the element."""
    kind = element.kind
    if kind == BOOLEAN:
        if isinstance(value, bool):
            return "true" if value else "false"
    elif kind == INTEGER:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    elif kind == DECIMAL:
        return _format_decimal(value, path)
    elif isinstance(value, str):
        return value
    raise ValueError(f"{path}: {value!r} is not a valid {element.fhir_type}")


def _format_decimal(value: Any, path: str) -> str:
    """A JSON number (or Decimal, to keep precision) as a FHIR decimal."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError(f"{path}: {value!r} is not a valid decimal")
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        raise ValueError(f"{path}: {value!r} is not a valid decimal")
    return repr(value) if isinstance(value, float) else str(value)


def _escape_attribute(value: str) -> str:
    """Escape a string for a double-quoted attribute; characters XML cannot hold are refused."""
    if _INVALID_XML_CHAR_RE.search(value):
        raise ValueError(f"{value[:40]!r} contains characters that XML cannot represent")
    if _ATTRIBUTE_ESCAPE_RE.search(value) is None:
        return value
    return _ATTRIBUTE_ESCAPE_RE.sub(_escape_match, value)


def _escape_text(value: str) -> str:
    """Escape XHTML text content: ``"`` too, as the FHIR publisher does; CR, which parsing would drop."""
    return _TEXT_ESCAPE_RE.sub(_escape_match, value)


def _escape_match(match: re.Match[str]) -> str:
    """The entity or character reference for one escaped character."""
    return _ESCAPES[match.group()]
