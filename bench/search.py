"""Slot search as third parties do it: `$termine_suchen` with referral codes and a postal-code filter.

A third party requests codes for every loaded Fachgebiet (the benchmark's server lists them all as
referral-free, `TERMINHUB_REFERRAL_FREE`), then searches with them, each search filtered to the first
digit of the postal code of a practice that offers the code's Fachgebiet, 20 Slots a page.
"""

from __future__ import annotations

import httpx
import orjson

from bench import load
from terminhub.demo.names import FACHGEBIET_SYSTEM, FACHGEBIETE

CODES_PER_SPECIALTY = 4
REFERRAL_FREE = ",".join(f"{FACHGEBIET_SYSTEM}|{fg.code}" for fg in FACHGEBIETE)


def _parameters(*items: tuple[str, str, object]) -> bytes:
    return orjson.dumps({"resourceType": "Parameters", "parameter": [{"name": n, k: v} for n, k, v in items]})


def request_codes(base_url: str, token: str, specialties: list[str]) -> dict[str, list[str]]:
    """`CODES_PER_SPECIALTY` fresh codes per Fachgebiet, requested as a third party."""
    headers = {"Authorization": f"Bearer {token}", **load.JSON}
    codes: dict[str, list[str]] = {}
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
        for code in specialties:
            for _ in range(CODES_PER_SPECIALTY):
                body = _parameters(
                    ("leistungsmerkmale", "valueCoding", {"system": FACHGEBIET_SYSTEM, "code": code})
                )
                resp = client.post("/fhir/$vermittlungscode_anfordern", content=body)
                if resp.status_code != 200:
                    raise RuntimeError(f"code request failed: {resp.status_code} {resp.text[:300]}")
                codes.setdefault(code, []).append(resp.json()["parameter"][0]["valueIdentifier"]["value"])
    return codes


def requests(codes: dict[str, list[str]], places: list[tuple[str, str]]) -> list[load.Request]:
    """Searches with every code, each with a postal-code prefix where practices of its Fachgebiet are
    (`places`: each practice's Fachgebiet and postal code)."""
    prefixes: dict[str, set[str]] = {}
    for specialty, postal_code in places:
        prefixes.setdefault(specialty, set()).add(postal_code[0])
    out: list[load.Request] = []
    for specialty, numbers in codes.items():
        for number in numbers:
            for plz in sorted(prefixes.get(specialty, ())):
                body = _parameters(
                    ("vermittlungscode", "valueString", number),
                    ("plz", "valueString", plz),
                    ("_count", "valueInteger", 20),
                )
                out.append(("POST", "/fhir/$termine_suchen", body))
    return out
