"""FHIR structure metadata, derived from the pydantic models of ``fhir.resources.R4B``.

The wire formats (XML above all) need, for every resource, datatype and backbone element, the
ordered list of its elements and what each element holds. Writing that by hand for ~140 resources
would rot; the R4B models already carry it (``elements_sequence()`` for the order, ``model_fields``
with aliases and annotations for the rest), so it is read from them once per type and cached.

Types are loaded lazily: a server that only speaks about Slots and Appointments never imports
the models of ClaimResponse. R4B is structurally R4 for everything this server stores; the few
resources that exist only in R4 (e.g. ``MedicinalProduct``) are unknown here.
"""

from __future__ import annotations

import functools
import types
import typing
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from fhir.resources import R4B
from fhir.resources.R4B import fhirtypes
from fhir_core.types import FhirBase

# Element kinds: what an element holds, i.e. how it is written in JSON and XML.
BOOLEAN: Final = "boolean"  # JSON true/false
INTEGER: Final = "integer"  # integer, positiveInt, unsignedInt: JSON number without fraction
DECIMAL: Final = "decimal"  # JSON number
STRING: Final = "string"  # every other primitive: JSON string
XHTML: Final = "xhtml"  # Narrative.div: an XHTML element in XML, a string in JSON
COMPLEX: Final = "complex"  # a datatype or backbone element with child elements
RESOURCE: Final = "resource"  # a whole resource (contained, Bundle.entry.resource, ...)

PRIMITIVE_KINDS: Final = frozenset({BOOLEAN, INTEGER, DECIMAL, STRING})
_INTEGER_TYPES: Final = frozenset({"integer", "positiveInt", "unsignedInt"})

# The model behind a primitive's ``_name`` JSON property (its id and extensions).
PRIMITIVE_EXTENSION_TYPE: Final = "FHIRPrimitiveExtension"
_ABSTRACT_RESOURCES: Final = frozenset({"Resource", "DomainResource"})


@dataclass(frozen=True, slots=True)
class ElementDef:
    """One element of a type, as both JSON and XML need to know it."""

    name: str  # JSON property and XML element name, e.g. "valueString"
    index: int  # position in the FHIR definition order
    is_list: bool  # max cardinality > 1
    kind: str  # one of the kind constants above
    fhir_type: str  # primitive name ("positiveInt"), type name ("HumanName", "PatientContact") or "Resource"
    choice: str | None  # "value" for value[x] variants, else None
    is_attribute: bool  # written as an XML attribute: Element.id and Extension.url

    @property
    def is_primitive(self) -> bool:
        """Whether the element is a primitive with a ``_name`` JSON companion (xhtml is not)."""
        return self.kind in PRIMITIVE_KINDS


@dataclass(frozen=True, slots=True)
class TypeDef:
    """A resource, datatype or backbone element with its elements in definition order."""

    name: str
    is_resource: bool
    elements: tuple[ElementDef, ...]
    attributes: tuple[ElementDef, ...]  # the elements written as XML attributes
    by_name: Mapping[str, ElementDef]  # element name -> definition
    json_keys: Mapping[str, ElementDef]  # every JSON property allowed, "_name" included


@functools.cache
def type_def(name: str) -> TypeDef:
    """Return the structure of the resource, datatype or backbone element called ``name``.

    Raises KeyError for a name that is no FHIR type; callers check untrusted names with
    ``is_resource_type`` first, so that this cache only ever holds real types.
    """
    try:
        model = R4B.get_fhir_model_class(name)
    except ValueError:
        raise KeyError(name) from None
    is_resource = _is_resource_model(model)
    fields = {field.alias or key: field for key, field in model.model_fields.items()}
    elements = tuple(
        _element_def(model.__name__, is_resource, index, json_name, fields[json_name])
        for index, json_name in enumerate(model.elements_sequence())
    )
    by_name = {element.name: element for element in elements}
    json_keys = dict(by_name)
    for element in elements:
        if element.is_primitive and not element.is_attribute:
            json_keys["_" + element.name] = element
    attributes = tuple(element for element in elements if element.is_attribute)
    return TypeDef(name, is_resource, elements, attributes, by_name, json_keys)


def is_resource_type(name: str) -> bool:
    """Whether ``name`` is a concrete resource type; safe (and cheap) for untrusted input."""
    return name in _top_level_types() and _is_resource_name(name)


@functools.cache
def resource_types() -> frozenset[str]:
    """All concrete resource types; the first call imports every model (about two seconds)."""
    return frozenset(name for name in _top_level_types() if _is_resource_name(name))


@functools.cache
def _top_level_types() -> frozenset[str]:
    """Names of the types that have a module of their own: resources and datatypes.

    Found from the names in ``fhirtypes`` without importing any model module, so that
    ``is_resource_type`` can reject an unknown name before anything is imported or cached.
    """
    names = set()
    for attribute, value in vars(fhirtypes).items():
        if attribute.endswith("Type") and isinstance(value, type) and issubclass(value, FhirBase):
            module, _, klass = value._model_klass.rpartition(".")
            if module.rpartition(".")[2] == klass.lower():
                names.add(klass)
    return frozenset(names)


@functools.cache
def _is_resource_name(name: str) -> bool:
    """Whether a top-level type is a concrete resource (cached: names are a finite set)."""
    return name not in _ABSTRACT_RESOURCES and _is_resource_model(R4B.get_fhir_model_class(name))


def _is_resource_model(model: type) -> bool:
    """Whether a model class is a resource rather than a datatype or backbone element."""
    from fhir.resources.R4B.resource import Resource

    return issubclass(model, Resource)


def _element_def(type_name: str, is_resource: bool, index: int, name: str, field: Any) -> ElementDef:
    """Describe one element from its pydantic field."""
    is_list, leaf = _unwrap(field.annotation)
    kind, fhir_type = _classify(leaf, f"{type_name}.{name}")
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    choice = extra.get("one_of_many")
    is_attribute = (name == "id" and not is_resource) or (name == "url" and type_name == "Extension")
    return ElementDef(name, index, is_list, kind, fhir_type, choice, is_attribute)


def _unwrap(annotation: Any) -> tuple[bool, Any]:
    """Strip Optional and List from an annotation: (is it a list, the item type)."""
    leaf = _strip_optional(annotation)
    if typing.get_origin(leaf) is list:
        return True, _strip_optional(typing.get_args(leaf)[0])
    return False, leaf


def _strip_optional(annotation: Any) -> Any:
    """``X | None`` -> ``X``; any other union is not a FHIR element and fails loudly."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unexpected union annotation {annotation!r}")
        return args[0]
    return annotation


def _classify(leaf: Any, where: str) -> tuple[str, str]:
    """The kind and FHIR type name of an element's item type."""
    if leaf is bool:
        return BOOLEAN, "boolean"
    if typing.get_origin(leaf) is typing.Annotated:
        return _classify_primitive(leaf, where)
    if isinstance(leaf, type) and issubclass(leaf, FhirBase):
        type_name = leaf._model_klass.rpartition(".")[2]
        return (RESOURCE if type_name == "Resource" else COMPLEX), type_name
    raise TypeError(f"{where}: cannot classify annotation {leaf!r}")


def _classify_primitive(leaf: Any, where: str) -> tuple[str, str]:
    """The kind of an ``Annotated[...]`` primitive, named by its fhir_core marker."""
    names = [marker.__visit_name__ for marker in leaf.__metadata__ if hasattr(marker, "__visit_name__")]
    if names:
        primitive = names[0]
    elif typing.get_args(leaf)[0] is uuid.UUID:
        primitive = "uuid"
    else:
        raise TypeError(f"{where}: unknown primitive annotation {leaf!r}")
    if primitive in _INTEGER_TYPES:
        return INTEGER, primitive
    if primitive == "decimal":
        return DECIMAL, primitive
    if primitive == "xhtml":
        return XHTML, primitive
    return STRING, primitive
