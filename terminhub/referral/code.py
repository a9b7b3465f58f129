"""The Vermittlungscode itself: 12 characters of an alphabet without look-alikes, cryptographically random."""

from __future__ import annotations

import secrets

from terminhub.fhir.outcome import FhirError

ALPHABET = "ABCDFGHJKLMNPQRSTUVWXYZ2456789"  # A–Z and 0–9 without O 0 I 1 E 3
LENGTH = 12
SYSTEM = "https://fhir.kbv.de/NamingSystem/KBV_NS_116117_TERMINSERVICE_Vermittlungscode"
_ALLOWED = frozenset(ALPHABET)


def generate() -> str:
    """A fresh code from the operating system's cryptographic random source (uniqueness: the database)."""
    return "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))


def normalise(raw: str) -> str:
    """`-` removed, spaces around trimmed, ASCII letters upper-cased; then 400 `code-malformed` unless it is
    exactly 12 characters of the alphabet."""
    value = raw.replace("-", "").strip()
    if not value.isascii():
        raise FhirError("code-malformed", "A referral code consists of 12 letters and digits.")
    value = value.upper()
    if len(value) != LENGTH or not set(value) <= _ALLOWED:
        raise FhirError(
            "code-malformed",
            "A referral code consists of 12 letters and digits (without O, 0, I, 1, E and 3).",
        )
    return value


def display(code: str) -> str:
    """`XXXX-XXXX-XXXX`, as referrers print it."""
    return f"{code[:4]}-{code[4:8]}-{code[8:]}"
