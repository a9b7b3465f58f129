"""Searches that name a referral code (4.1 secrecy): the code is looked up like in every operation
(failed look-ups count, 429 past the limit), normalised, and the links of the result carry no code."""

from __future__ import annotations

from dataclasses import replace

from terminhub.api.context import Context
from terminhub.fhir.search_request import Criterion, SearchRequest
from terminhub.referral.code import SYSTEM
from terminhub.referral.service import ReferralService


def names_code(params: list[tuple[str, str]]) -> bool:
    """Cheap test used before the transaction starts: such searches (and their further pages) write
    server-side paging state."""
    return any(SYSTEM in value or (name == "_cursor" and value.startswith("s.")) for name, value in params)


def _takes_code(resource_type: str, criterion: Criterion) -> bool:
    return (
        resource_type == "ServiceRequest" and criterion.name == "identifier" and criterion.modifier is None
    ) or (criterion.name == "based-on" and criterion.modifier == "identifier")


def check_codes(ctx: Context, request: SearchRequest) -> bool:
    """Normalise every referral code the search names; True when there is one (its links must hide it)."""
    secret = False
    service: ReferralService | None = None
    for index, criterion in enumerate(request.criteria):
        if not _takes_code(request.resource_type, criterion):
            continue
        values = []
        for value in criterion.values:
            system, bar, code = value.rpartition("|")
            if bar and system == SYSTEM:
                service = service or ReferralService(ctx.repo, ctx.settings, ctx.tz)
                values.append(f"{SYSTEM}|{service.lookup(code, ctx.caller.client_id).code}")
                secret = True
            else:
                values.append(value)
        request.criteria[index] = replace(criterion, values=tuple(values))
    if secret:
        request.echo = [(k, v) for k, v in request.echo if k != "page"]
    return secret
