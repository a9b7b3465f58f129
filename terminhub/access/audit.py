"""AuditEvents: one per request that writes or is refused, written through the one write path."""

from __future__ import annotations

from terminhub.clock import instant

ACTIONS = {
    "create": "C",
    "read": "R",
    "search": "R",
    "vread": "R",
    "history": "R",
    "update": "U",
    "delete": "D",
    "operation": "E",
    "transaction": "E",
    "batch": "E",
}
AUDIT_TYPE = {
    "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
    "code": "rest",
    "display": "RESTful Operation",
}


def outcome_code(status: int) -> str:
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


def audit_event(
    *,
    interaction: str,
    status: int,
    now_us: int,
    client_id: str,
    client_name: str,
    entity: str | None,
    system_name: str,
    description: str | None = None,
) -> dict:
    """The AuditEvent of 2: type rest, action, recorded, outcome, the client, the resource concerned."""
    event: dict = {
        "resourceType": "AuditEvent",
        "type": AUDIT_TYPE,
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": interaction}],
        "action": ACTIONS.get(interaction, "E"),
        "recorded": instant(now_us),
        "outcome": outcome_code(status),
        "agent": [
            {
                "who": {
                    "identifier": {"system": "urn:terminhub:client", "value": client_id},
                    "display": client_name,
                },
                "requestor": True,
            }
        ],
        "source": {"observer": {"display": system_name}},
    }
    if description:
        event["outcomeDesc"] = description[:1000]
    if entity:
        event["entity"] = [{"what": {"reference": entity}}]
    return event
